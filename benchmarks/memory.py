"""`python -m benchmarks.memory`: peak memory of training from the uint8 store, at scale.

Writes a store of generated phantoms (10,000 training images at 224 px by default: 1.5 GB of
uint8 rows, as `decode` would write them) and trains ResNet18 on it in a child process, whose
peak resident memory (VmHWM) is the figure. The store is read a batch at a time with `pread`,
so the peak should not depend on how many images the store holds; compare `--images 1000`.

The one-channel store (what `decode` writes) is measured against the three-channel RGB rows of
earlier versions in the same run: size on disk, the time to read every row in random batches,
and training memory and time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _row(job: tuple[int, int, int, int]) -> bytes:
    from cxr.data.phantoms import render_phantom

    index, size, seed, channels = job
    label = ("infected", "normal")[index % 2]
    gray = render_phantom((label,), size, 0.3, np.random.default_rng([seed, index]))
    return np.repeat(gray[None], channels, axis=0).tobytes()


def make_store(out: Path, images: int, size: int, seed: int = 0, channels: int = 1) -> Path:
    """A store with `images` training rows and 64 val and test rows each; reused when present."""
    from cxr.data.store import write_store

    if (out / "index.json").is_file():
        return out
    counts = {"train": images, "val": 64, "test": 64}
    start = 0
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        splits = {}
        for name, n in counts.items():
            jobs = [(start + i, size, seed, channels) for i in range(n)]
            rows = pool.map(_row, jobs, chunksize=64)
            splits[name] = ([f"{name}/{i:06d}.png" for i in range(n)], [i % 2 for i in range(n)], rows)
            start += n
        write_store(out, size, ("infected", "normal"), False, splits, channels)
    return out


def read_all(store: Path, batch_size: int) -> float:
    """Seconds to read every training row once, in shuffled batches (after one warm-up pass)."""
    import torch

    from cxr.data.store import SplitStore

    images = SplitStore(store, "train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).split(batch_size)
    for idx in order:  # warm the page cache, as every epoch after the first finds it
        images[idx]
    start = time.perf_counter()
    for idx in order:
        images[idx]
    return time.perf_counter() - start


def _memory_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


class AnonPeak(threading.Thread):
    """Samples RssAnon (private memory: tensors, heap; not the shared library pages that
    VmHWM also counts) every few milliseconds and keeps the highest value."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.003):
            self.peak = max(self.peak, _memory_kib()["RssAnon"])


def child(store: str, steps: int, batch_size: int, arch: str, low_memory: bool) -> None:
    """Train `arch` on the store for `steps` batches in a random order over all of it, with
    `train.low_memory` on or off."""
    import torch

    from benchmarks.throughput import fit_epoch
    from cxr.data.store import SplitStore
    from cxr.model.networks import build_model
    from cxr.train import loop as training

    if low_memory:
        training.release_large_blocks()
    images = SplitStore(store, "train")
    torch.manual_seed(0)
    runtime = training.Runtime.select()
    model = runtime.prepare_model(build_model(arch, 2, (64,), 0.2, images.image_size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    before = _memory_kib()["VmRSS"]
    if steps:  # the first `steps` batches of a shuffle of every row
        full = training.batches
        training.batches = lambda n, size, generator: itertools.islice(full(n, size, generator), steps)
    sampler = AnonPeak()
    sampler.start()
    start = time.perf_counter()
    labels, generator = torch.from_numpy(images.labels), torch.Generator().manual_seed(0)
    fit_epoch(model, images, labels, optimizer, batch_size, generator, runtime, runtime.images)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    seen = min(len(images), steps * batch_size) if steps else len(images)
    after = _memory_kib()
    print(
        json.dumps(
            {
                "rss_before_training_kib": before,
                "peak_kib": after["VmHWM"],
                "peak_anon_kib": sampler.peak,
                "library_pages_kib": after["RssFile"],
                "images_seen": seen,
                "seconds": round(seconds, 1),
                "device": str(runtime.device),
            }
        )
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=60, help="training batches (0 = a whole epoch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--data", type=Path, default=REPO / ".bench")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--low-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.batch_size, args.arch, args.low_memory)
        return {}

    stores, sizes, reads = {}, {}, {}
    for channels in (1, 3):
        start = time.perf_counter()
        name = f"store-{args.images}-{args.image_size}-c{channels}"
        stores[channels] = make_store(args.data / name, args.images, args.image_size, channels=channels)
        sizes[channels] = sum(f.stat().st_size for f in stores[channels].glob("*.npy"))
        reads[channels] = read_all(stores[channels], args.batch_size)
        print(
            f"store ({channels} channel{'s' * (channels > 1)}): {sizes[channels] / 2**30:.2f} GiB on disk, ready in "
            f"{time.perf_counter() - start:.0f} s; every row read in random batches in {reads[channels]:.2f} s",
            flush=True,
        )
    results = {}
    runs = (("default", [], 1), ("low_memory", ["--low-memory"], 1), ("rgb_rows", [], 3))
    for setting, flag, channels in runs:
        store = stores[channels]
        cmd = [sys.executable, "-m", "benchmarks.memory", "--child", str(store), "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--arch", args.arch, *flag]
        out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result.update(
            peak_gib=round(result["peak_kib"] / 2**20, 3), peak_anon_gib=round(result["peak_anon_kib"] / 2**20, 3)
        )
        results[setting] = result
        print(
            f"train.low_memory {setting == 'low_memory'}: {args.arch}, batch {args.batch_size}, "
            f"{result['images_seen']} images read at random, {result['seconds']} s on {result['device']}: "
            f"peak resident memory {result['peak_gib']:.2f} GiB (before the first batch "
            f"{result['rss_before_training_kib'] / 2**20:.2f} GiB; shared library pages "
            f"{result['library_pages_kib'] / 2**20:.2f} GiB); peak private memory {result['peak_anon_gib']:.2f} GiB",
            flush=True,
        )
    result = {
        "images_in_store": args.images,
        "image_size": args.image_size,
        "store_gib": round(sizes[1] / 2**30, 3),
        "rgb_store_gib": round(sizes[3] / 2**30, 3),
        "store_size_ratio_rgb_over_gray": round(sizes[3] / sizes[1], 3),
        "read_seconds_ratio_rgb_over_gray": round(reads[3] / reads[1], 3),
        "train_seconds_ratio_rgb_over_gray": round(results["rgb_rows"]["seconds"] / results["default"]["seconds"], 3),
        "peak_anon_gib_rgb_minus_gray": round(
            results["rgb_rows"]["peak_anon_gib"] - results["default"]["peak_anon_gib"], 3
        ),
        "arch": args.arch,
        "batch_size": args.batch_size,
        **results,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
