"""Careless data and params that used to give a silent wrong result or a raw traceback (issue 24): each
is now refused by name, with the fix, before anything is trained or written."""

from __future__ import annotations

import contextlib
import csv
import shutil

import pytest

from cxr.config import parse_params
from cxr.data import sources
from cxr.data.archives import ArchiveError
from cxr.data.splits import DatasetError, file_metadata, scan_split
from tests.conftest import tiny_params_dict


def _split_csv(demo_root, rows: list[str]) -> None:
    split = demo_root / "train"
    lines = ["path,labels,orig_width"]
    for cls in ("infected", "normal"):
        lines += [f"{cls}/{p.name},{cls}," for p in sorted((split / cls).glob("*.png"))]
    (split / "labels.csv").write_text("\n".join(lines + rows) + "\n")


def test_a_repeated_row_is_refused_not_trained_twice(demo_root):
    first = sorted((demo_root / "train" / "normal").glob("*.png"))[0].name
    _split_csv(demo_root, [f"normal/{first},normal,"])
    assert len(scan_split(demo_root, "val").files) == 12  # other splits untouched
    with pytest.raises(DatasetError, match=rf"labels.csv:26: {first} already has a row \(line 14\); this row repeats"):
        scan_split(demo_root, "train")


def test_one_film_with_two_answers_is_refused(demo_root):
    first = sorted((demo_root / "train" / "normal").glob("*.png"))[0].name
    _split_csv(demo_root, [f"./normal/{first},infected,"])  # the same file, spelt another way
    with pytest.raises(DatasetError, match=r"gives it other labels \(infected vs normal\); list all of a film's"):
        scan_split(demo_root, "train")


@pytest.mark.parametrize("width", ["-640", "wide", "0", "1e9"])
def test_a_size_column_must_be_a_size(demo_root, width):
    """A negative orig_width drove a false shortcut warning; a text one was a raw traceback."""
    _split_csv(demo_root, [])
    text = (demo_root / "train" / "labels.csv").read_text().splitlines()
    text[1] += width
    (demo_root / "train" / "labels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=rf"labels.csv:2: orig_width '{width}' is not a size in pixels"):
        scan_split(demo_root, "train")
    with pytest.raises(DatasetError, match="orig_width"):
        file_metadata(demo_root / "train")


def test_a_root_csv_with_a_repeated_file_is_refused_before_splitting(tmp_path, demo_root):
    """Unsplit data: a repeated row could land the same film in train and test."""
    folder = tmp_path / "in"
    folder.mkdir()
    pngs = sorted(demo_root.rglob("*.png"))[:30]
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, png in enumerate(pngs):
            shutil.copy(png, folder / f"{i}.png")
            writer.writerow([f"{i}.png", png.parent.name])
        writer.writerow(["3.png", pngs[3].parent.name])
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(folder))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises((ArchiveError, DatasetError), match=r"labels.csv:32: 3.png already has a row \(line 5\)"):
        sources.write_dataset(parse_params(raw).data, 0, out)
    assert not any(out.rglob("*.png"))


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_the_training_lock_is_never_followed_through_a_link(tmp_path, kind):
    """Issue 24, hole 4: a symlink at models/.train.lock had training truncate its target; a folder there
    was a raw traceback."""
    from cxr.train.exclusive import TrainingLockError, training_lock

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    lock = tmp_path / "models" / ".train.lock"
    lock.parent.mkdir()
    if kind == "symlink":
        lock.symlink_to(target)
    else:
        lock.mkdir()
    with pytest.raises(TrainingLockError, match=r"\.train\.lock: the training lock must be a plain file, found a"):
        with training_lock(lock):
            pass
    assert target.read_text() == "keep me\n"


_POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from cxr.lifetime import worker_dies_with_parent
pool = ProcessPoolExecutor(2, initializer=worker_dies_with_parent)
pool.submit(time.sleep, 0).result()
print(*pool._processes, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_pool_workers_die_with_a_killed_stage(tmp_path):
    """Issue 24: decode's pool workers (hundreds of MB each) outlived a `kill -9` of decode."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "pids.txt"
    with out.open("w") as sink:
        stage = subprocess.Popen([sys.executable, "-c", _POOL], cwd=REPO, stdout=sink)
    deadline = time.monotonic() + 60
    while not out.read_text().strip():
        assert time.monotonic() < deadline, "the pool did not start"
        time.sleep(0.05)
    workers = [int(pid) for pid in out.read_text().split()]
    assert workers
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    try:
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "pool workers outlived the killed stage"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_predict_out_a_folder_is_named_before_the_model_loads(tmp_path, capsys):
    """Issue 24: `predict --out <a folder>` scored everything, then died with a raw traceback."""
    from stages import predict

    with pytest.raises(SystemExit) as exited:
        predict.run(["x.png", "--out", str(tmp_path), "--model", str(tmp_path / "no-model.pt")])
    assert exited.value.code == 2
    says = f"--out {tmp_path} is a folder; give a file in it, e.g. --out {tmp_path}/predictions.csv"
    assert says in capsys.readouterr().err
