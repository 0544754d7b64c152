"""`python -m benchmarks.decode_speed`: `decode`'s two ways of reading JPEG films, measured in one run.

The same folder is made into the decode-once store twice: on CPU worker processes (decode.device: cpu,
PIL and libjpeg-turbo) and with the JPEG films decoded in batches on `--device` (default: cuda where
torch finds it, nvJPEG; elsewhere the CPU through torchvision's batched decoder, the same code path).
Films: every JPEG under `--folder` (e.g. ../shared/real-xray-train), copied into a train/val/test tree,
or `--images` generated phantoms of `--size` px saved as JPEG q90 (radiographs are about 1024 px).

Prints images/s each way, their ratio, and how the two stores differ: whether they are byte-identical,
the share of rows that differ and the largest grey-level difference (nvJPEG's inverse DCT need not match
libjpeg-turbo's, which is why decode.device is a param). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.throughput import cpu_name
from cxr.data.decoding import Decoder, build_store
from cxr.data.phantoms import render_phantom

CLASSES = ("infected", "normal")


def _place(i: int) -> str:
    """Film i's folder: train, val and test 7:2:1 by index, the two classes alternating by tens."""
    split = (("train",) * 7 + ("val", "val", "test"))[i % 10]
    return f"{split}/{CLASSES[(i // 10) % 2]}"


def _phantom(job: tuple[str, int, int]) -> None:
    path, size, seed = job
    film = render_phantom(Path(path).parent.name, size, 0.3, np.random.default_rng(seed))  # its folder's class
    Image.fromarray(film).save(path, "JPEG", quality=90)


def make_films(root: Path, folder: Path | None, images: int, size: int) -> int:
    """A train/val/test tree of JPEG films under `root`: copies of `folder`'s, or generated phantoms."""
    if folder is not None:
        sources = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not sources:
            raise SystemExit(f"{folder}: no .jpg or .jpeg files under it")
        for i, src in enumerate(sources):
            (root / _place(i)).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / _place(i) / f"{i:06d}.jpg")
        return len(sources)
    jobs = [(str(root / _place(i) / f"{i:06d}.jpg"), size, i) for i in range(images)]
    for path, _, _ in jobs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_phantom, jobs, chunksize=16))
    return images


def timed_store(raw: Path, out: Path, image_size: int, decoder: Decoder) -> float:
    """Images per second of one store build (a first untimed build warms the page cache and the device)."""
    start = time.perf_counter()
    counts = build_store(raw, out, image_size, multilabel=False, decoder=decoder)
    return sum(counts.values()) / (time.perf_counter() - start)


def differences(one: Path, two: Path) -> dict:
    """How the store at `two` differs from the one at `one` (same files, same shapes), split by split."""
    rows = differing = 0
    largest = 0
    for split in ("train", "val", "test"):
        a, b = np.load(one / f"{split}.npy"), np.load(two / f"{split}.npy")
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
        rows += len(a)
        if diff.size:
            differing += int((diff.max(1) > 0).sum())
            largest = max(largest, int(diff.max()))
    share = round(differing / max(rows, 1), 4)
    return {"identical": differing == 0, "rows_differing": share, "max_grey_difference": largest}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="JPEG films to read (default: generated phantoms)")
    parser.add_argument("--images", type=int, default=2000, help="phantoms to generate without --folder")
    parser.add_argument("--size", type=int, default=1024, help="side of the generated phantoms, px")
    parser.add_argument("--image-size", type=int, default=224, help="train.image_size of the store")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: as decode)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cxr-decode-speed-") as tmp:
        root = Path(tmp)
        films = make_films(root / "raw", args.folder, args.images, args.size)
        ways = {"cpu": Decoder(args.workers), "device": Decoder(args.workers, torch.device(args.device))}
        rates = {}
        for name, decoder in ways.items():
            build_store(root / "raw", root / name, args.image_size, multilabel=False, decoder=decoder)  # warm-up
            rates[name] = round(timed_store(root / "raw", root / name, args.image_size, decoder), 1)
        result = {
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name(),
            "decode_device": args.device,
            "torch": torch.__version__,
            "films": films,
            "source": str(args.folder) if args.folder else f"phantoms {args.size} px JPEG q90",
            "image_size": args.image_size,
            "workers": ways["cpu"].processes,
            "cpu_images_per_s": rates["cpu"],
            "device_images_per_s": rates["device"],
            "ratio": round(rates["device"] / rates["cpu"], 3),
            **differences(root / "cpu", root / "device"),
        }
    print(
        f"decode of {films} JPEG films at {args.image_size} px, {result['workers']} processes: cpu "
        f"{rates['cpu']} images/s, batched on {args.device} {rates['device']} images/s (x{result['ratio']}); "
        f"stores identical: {result['identical']}, rows differing {result['rows_differing']:.1%}, "
        f"largest grey difference {result['max_grey_difference']}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
