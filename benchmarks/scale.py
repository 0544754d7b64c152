"""`python -m benchmarks.scale --images 10000 100000`: the whole pipeline at the size of the public sets.

For each size N it renders N distinct demo phantoms (128 px, each its own RNG stream, so no two are copies)
into a `{split}/{class}` folder (70/15/15), plants altered copies of the first --copies training films in the
test split (a third each: half size, JPEG q70, darkened x0.7), and runs the pipeline in a fresh workspace (the
repository's tracked files, `data.source: folder`, a frozen ResNet18 backbone, one epoch) stage by stage with
`dvc repro --single-item`: check_params, download (a copy of the local folder), verify, decode, features,
train, evaluate. Per stage it prints the wall time (DVC's hashing and caching included), the cost per image and
the peak resident memory of the dvc process and everything it ran (wait4's rusage), then `dvc status` on the
unchanged workspace. verify.max_leaks is the number of planted copies so the run goes on; the leak check is
scored from metrics/data_report.md: a near-duplicate pair across splits that is not a planted copy with its
original is a false alarm; the planted copies found are the recall per alteration.

The last line is JSON; `per_image_growth` compares the per-image cost of the largest size with the smallest
(target: at most 1.5) and `peak_memory_growth` the largest stage peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
STAGES = ("check_params", "download", "verify", "decode", "features", "train", "crossval", "evaluate")
CLASSES = ("infected", "normal")
SIZE = 128


def _split_of(i: int) -> str:
    return "train" if i % 20 < 14 else "val" if i % 20 < 17 else "test"


def _film_name(i: int) -> str:
    return f"{_split_of(i)}/{CLASSES[i % 2]}/{i:06d}.png"


def _film(i: int) -> Image.Image:
    from cxr.data.phantoms import render_phantom

    return Image.fromarray(render_phantom((CLASSES[i % 2],), SIZE, 0.3, np.random.default_rng([20261128, i])))


def _write_films(job: tuple[str, int, int]) -> int:
    folder, start, stop = job
    for i in range(start, stop):
        _film(i).save(Path(folder) / _film_name(i), optimize=False)
    return stop - start


def _jpeg_q70(img: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue()))


ALTERATIONS = {
    "half size": lambda im: im.resize((SIZE // 2, SIZE // 2), Image.BILINEAR),
    "JPEG q70": _jpeg_q70,
    "darkened x0.7": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
}


def _copy_name(kind: str, i: int) -> str:
    suffix = ".jpg" if kind.startswith("JPEG") else ".png"
    return f"test/{CLASSES[i % 2]}/copy-{kind.split()[0].lower()}-{i:06d}{suffix}"


def make_films(folder: Path, images: int, copies: int, workers: int) -> dict[str, str]:
    """N distinct films plus `copies` altered copies of training films; return copy name -> original name."""
    for split in ("train", "val", "test"):
        for cls in CLASSES:
            (folder / split / cls).mkdir(parents=True, exist_ok=True)
    step = 500
    jobs = [(str(folder), a, min(a + step, images)) for a in range(0, images, step)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_write_films, jobs)) == images
    originals = [i for i in range(images) if _split_of(i) == "train"][:copies]
    planted = {}
    for n, i in enumerate(originals):
        kind = list(ALTERATIONS)[n % len(ALTERATIONS)]
        name = _copy_name(kind, i)
        ALTERATIONS[kind](_film(i)).convert("L").save(folder / name, quality=70)
        planted[name] = _film_name(i)
    return planted


def make_workspace(ws: Path, folder: Path, copies: int) -> None:
    """The repository's tracked files (as they are in the working tree) in a new git + DVC repository at `ws`,
    its params set to read `folder` with a frozen backbone for one epoch."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file() and not name.startswith(("data/", "models/", "metrics/")):
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, ws / name)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["data"].update(source="folder", folder=str(folder), task="binary")
    params["train"].update(freeze="backbone", epochs=1, batch_size=256)
    params["verify"]["max_leaks"] = copies  # the planted copies are known leaks; false alarms beyond them fail
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True)
    subprocess.run([*git, "commit", "-qm", "scale benchmark"], cwd=ws, check=True)


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak resident MiB of the process and every child it waited for, exit status)."""
    start = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def leak_check(report: Path, planted: dict[str, str]) -> dict:
    """Near-duplicate pairs across splits in verify's report: planted copies found (per alteration) and false alarms."""
    text = report.read_text()
    section = re.search(r"## Near duplicates across splits \(leaks\): \d+\n(.*?)(\n## |\Z)", text, re.S)
    lines = (section.group(1) if section else "").splitlines()
    pairs = [line[2:].split(" ~ ") for line in lines if line.startswith("- ")]
    found = {a if a in planted else b for a, b in pairs if planted.get(a) == b or planted.get(b) == a}
    identical = re.search(r"## Identical images across splits \(leaks\): (\d+)", text)
    recall = {}
    for kind in ALTERATIONS:
        names = [n for n in planted if f"/copy-{kind.split()[0].lower()}-" in n]
        recall[kind] = round(sum(n in found for n in names) / max(1, len(names)), 4)
    return {
        "pairs_across": len(pairs),
        "false_alarms": len(pairs) - len(found),
        "identical_across": int(identical.group(1)) if identical else None,
        "planted": len(planted),
        "recall": recall,
    }


def run_size(root: Path, images: int, copies: int, workers: int) -> dict:
    """Generate, build the workspace, run each stage and `dvc status`; the figures of one size."""
    folder, ws = root / f"films-{images}", root / f"ws-{images}"
    ws.mkdir(parents=True)
    start = time.perf_counter()
    planted = make_films(folder, images, copies, workers)
    result = {"images": images, "files": images + len(planted), "generate_s": round(time.perf_counter() - start, 1)}
    make_workspace(ws, folder, len(planted))
    log, stages = ws / "scale.log", {}
    for name in STAGES:
        wall, peak, code = timed(["dvc", "repro", "--single-item", name], ws, log)
        stages[name] = {"wall_s": round(wall, 1), "ms_per_image": round(1000 * wall / result["files"], 3),
                        "peak_mib": round(peak)}  # fmt: skip
        print(f"{images:>7} films  {name:<12} {wall:8.1f} s  {stages[name]['ms_per_image']:7.3f} ms/image  "
              f"peak {peak:7.0f} MiB", flush=True)  # fmt: skip
        if code != 0:
            raise SystemExit(f"benchmarks.scale: `dvc repro --single-item {name}` failed at {images} films; see {log}")
    result["stages"] = stages
    result["total_s"] = round(sum(s["wall_s"] for s in stages.values()), 1)
    wall, _, _ = timed(["dvc", "status", "evaluate"], ws, ws / "status.log")
    status = subprocess.run(["dvc", "status", "evaluate"], cwd=ws, capture_output=True, text=True).stdout.strip()
    result["dvc_status"] = {"wall_s": round(wall, 1), "says": status}
    result["leak_check"] = leak_check(ws / "metrics" / "data_report.md", planted)
    result["test_accuracy"] = json.loads((ws / "metrics" / "summary" / "test.json").read_text()).get("accuracy")
    print(f"{images:>7} films  dvc status {wall:.1f} s: {status!r}; leak check {result['leak_check']}", flush=True)
    return result


def growth(runs: list[dict]) -> dict:
    small, large = runs[0], runs[-1]
    per_image = {s: round(large["stages"][s]["ms_per_image"] / max(1e-9, small["stages"][s]["ms_per_image"]), 2)
                 for s in STAGES}  # fmt: skip
    total = (large["total_s"] / large["files"]) / (small["total_s"] / small["files"])
    peak = max(s["peak_mib"] for s in large["stages"].values()) / max(s["peak_mib"] for s in small["stages"].values())
    return {"per_image_growth": round(total, 2), "per_image_growth_by_stage": per_image,
            "peak_memory_growth": round(peak, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--copies", type=int, default=300, help="altered copies planted (a third of each kind)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the films")
    parser.add_argument("--dir", type=Path, default=None, help="where films and workspaces go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the films and workspaces")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=args.dir))
    try:
        runs = [run_size(root, n, args.copies, args.workers) for n in sorted(args.images)]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result = {"runs": runs, **(growth(runs) if len(runs) > 1 else {}), "python": sys.version.split()[0],
              "cpus": os.cpu_count()}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
