"""Hostile and careless data (issue 14): paths that escape, links, broken checkpoints, NaN runs,
a one-image last batch. Each case is refused by name or handled; nothing outside is written."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil

import pytest
import torch

from cxr.config import parse_params
from cxr.data import sources
from cxr.data.splits import DatasetError, scan_split
from cxr.model.checkpoint import CheckpointError, load_checkpoint
from cxr.train.loop import NonFiniteLossError
from tests.conftest import REPO as REPO_ROOT
from tests.conftest import tiny_params_dict, train_on


def _folder_params(folder) -> object:
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(folder))
    return parse_params(raw).data


def _csv_dataset(root, demo_root, bad_row: str):
    root.mkdir()
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        for i, png in enumerate(sorted(demo_root.rglob("*.png"))[:20]):
            shutil.copy(png, root / f"{i}.png")
            writer.writerow([f"{i}.png", png.parent.name, f"p{i}"])
        writer.writerow([bad_row, "normal", "p99"])


@pytest.mark.parametrize("bad_row", ["../../outside/secret.txt", "/etc/hostname", "sub\\..\\..\\x.png"])
def test_a_root_labels_csv_cannot_reach_outside_the_dataset(tmp_path, demo_root, bad_row):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("host secret")
    folder = tmp_path / "data" / "in"
    folder.parent.mkdir()
    _csv_dataset(folder, demo_root, bad_row)
    out = tmp_path / "copied"
    out.mkdir()
    with pytest.raises(DatasetError, match=r"labels.csv:22: path .* (contains '\.\.'|must be relative)"):
        sources.write_dataset(_folder_params(folder), 0, out)
    assert not any(p.name == "secret.txt" for p in out.rglob("*"))


def test_a_row_that_climbs_and_comes_back_down_writes_nothing_outside(tmp_path, demo_root):
    """Issue 24, hole 1: `imgs/../../data/in/imgs/x.png` resolves inside the folder, but its copy's
    destination was built with the '..' kept and landed above data/raw: any '..' is refused now."""
    folder = tmp_path / "data" / "in"
    folder.parent.mkdir()
    _csv_dataset(folder, demo_root, "x")
    rows = (folder / "labels.csv").read_text().splitlines()
    first = rows[1].split(",")[0]
    rows[1] = rows[1].replace(first, f"../../data/in/{first}", 1)  # resolves to the folder's own file
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "work" / "raw"
    out.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(DatasetError, match=r"labels.csv:2: path .* contains '\.\.'"):
        sources.write_dataset(_folder_params(folder), 0, out)
    assert {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)} == {
        p for p in before if not p.is_relative_to(out)
    }


def test_a_split_labels_csv_cannot_reach_outside_its_split(tmp_path, demo_root):
    split = demo_root / "train"
    (tmp_path / "secret.png").write_bytes((split / "normal").iterdir().__next__().read_bytes())
    with (split / "labels.csv").open("w") as f:
        f.write("path,labels\nnormal/" + next((split / "normal").iterdir()).name + ",normal\n")
        f.write("../../secret.png,normal\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: path '../../secret.png' contains '\.\.'"):
        scan_split(demo_root, "train")
    (split / "labels.csv").write_text(f"path,labels\n{tmp_path / 'secret.png'},normal\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: path .* must be relative"):
        scan_split(demo_root, "train")


def test_links_in_a_source_folder_are_refused_by_name(tmp_path, demo_root):
    (tmp_path / "secret.txt").write_text("host secret")
    os.symlink(tmp_path / "secret.txt", demo_root / "train" / "normal" / "host.png")
    out = tmp_path / "copied"
    out.mkdir()
    with pytest.raises(DatasetError, match=r"1 symbolic links refused \(.*host.png\)"):
        sources.write_dataset(_folder_params(demo_root), 0, out)
    (demo_root / "train" / "normal" / "host.png").unlink()
    os.symlink(demo_root / "train", demo_root / "train" / "loop")  # a link loop
    with pytest.raises(DatasetError, match=r"symbolic links refused \(.*loop\)"):
        sources.write_dataset(_folder_params(demo_root), 0, out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04truncated"])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"model.pt: not a checkpoint this pipeline wrote"):
        load_checkpoint(bad)


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, demo_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path)
    payload = torch.load(tmp_path / "models/model.pt", weights_only=True)
    payload["spec"]["arch"] = "vgg16"
    torch.save(payload, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"wrong.pt: its spec and weights do not make a model"):
        load_checkpoint(tmp_path / "wrong.pt")


def test_a_nan_validation_loss_stops_training_and_keeps_the_last_good_model(tmp_path, demo_root, monkeypatch):
    from cxr.train import run as run_module

    real = run_module.evaluate_epoch
    calls = {"n": 0}

    def second_epoch_diverges(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 2:
            result.loss = float("nan")
        return result

    monkeypatch.setattr(run_module, "evaluate_epoch", second_epoch_diverges)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"validation loss is nan after epoch 2"):
        train_on(parse_params(tiny_params_dict(epochs=3)), demo_root, tmp_path)
    assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 1


def test_broken_weights_are_refused_by_prediction(tmp_path, demo_root, monkeypatch):
    from stages import predict

    monkeypatch.chdir(tmp_path)
    train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path)
    payload = torch.load(tmp_path / "models/model.pt", weights_only=True)
    payload["model"] = {
        k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in payload["model"].items()
    }
    torch.save(payload, tmp_path / "nan.pt")
    image = next((demo_root / "test" / "normal").iterdir())
    with pytest.raises(Exception, match=r"non-finite probabilities"):
        predict.run([str(image), "--model", str(tmp_path / "nan.pt"), "--metrics", str(tmp_path / "none.json")])


def test_a_last_batch_of_one_image_is_left_out_not_a_crash(tmp_path, demo_root, monkeypatch):
    extra = next((demo_root / "train" / "normal").iterdir())
    shutil.copy(extra, extra.with_name("one_more.png"))  # 25 training images, batches of 8: 8+8+8+1
    monkeypatch.chdir(tmp_path)
    raw = tiny_params_dict(epochs=1)
    raw["verify"]["max_leaks"] = 5
    best = train_on(parse_params(raw), demo_root, tmp_path)
    assert best["epoch"] == 1


@pytest.mark.slow
def test_predict_refuses_a_16_bit_png_bomb_by_name_under_a_memory_bound(tmp_path, demo_root, monkeypatch):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path)
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.full((12_000, 12_000), 3000, np.uint16)).save(bomb)  # 144 M pixels in a small file
    assert bomb.stat().st_size < 2_000_000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(bomb), "--model", "models/model.pt", "--metrics", "none.json"]
    child = (  # the child reports its own peak resident memory (VmHWM starts afresh at exec; ru_maxrss
        # would carry the forked test process's)
        f"import runpy, sys; sys.argv = ['predict', *{args!r}]\n"
        "try:\n    runpy.run_module('stages.predict', run_name='__main__')\n"
        "finally:\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "    print('PEAK_KIB', hwm, file=sys.stderr)"
    )
    run = subprocess.run(
        [sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1 and "12000x12000 = 144,000,000 pixels, over the limit" in run.stderr, run.stderr
    peak_mib = int(run.stderr.rsplit("PEAK_KIB", 1)[1].split()[0]) / 1024
    assert peak_mib < 1500, peak_mib  # decoding it would take over 1.5 GiB on top of torch


def test_what_a_killed_extraction_left_is_removed_and_ignored_by_git(tmp_path):
    import subprocess
    import sys

    from cxr.atomic import atomic_dir, remove_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".extract.pid{int(dead.stdout)}.abc"
    (stale / "train").mkdir(parents=True)
    mine = tmp_path / f".raw.pid{os.getpid()}.xyz.tmp"
    mine.mkdir()
    assert remove_stale(tmp_path) == [stale] and mine.exists()
    with atomic_dir(tmp_path / "raw") as tmp:
        assert ".pid" in tmp.name
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/.raw.pid123.abc.tmp"], cwd=REPO_ROOT)
    assert ignored.returncode == 0


def test_binary_task_with_three_classes_is_refused(tmp_path):
    from cxr.data.demo import write_demo_dataset
    from stages.decode import decode

    raw = tiny_params_dict()
    raw["data"]["task"] = "multiclass"
    write_demo_dataset(tmp_path / "raw", parse_params(raw).data, 0)
    with pytest.raises(DatasetError, match=r"data.task is binary but .* has 3 classes"):
        decode(parse_params(tiny_params_dict()), tmp_path / "raw", tmp_path / "decoded", tmp_path / "none.json")


def test_files_that_are_not_images_are_named_by_verify(demo_root, capsys, tmp_path):
    from stages.verify import verify

    (demo_root / "train" / "normal" / "notes.docx").write_text("x")
    shaped = verify(parse_params(tiny_params_dict()), demo_root, tmp_path / "d.json", tmp_path / "r.md")
    assert shaped["total"] == 48
    assert "1 files are not images by their suffix and are left out: train/normal/notes.docx" in capsys.readouterr().out
    assert "train/normal/notes.docx" in (tmp_path / "r.md").read_text()


def test_a_second_trainer_is_refused_while_one_holds_the_workspace(tmp_path, demo_root, monkeypatch):
    from cxr.train.exclusive import TrainingLockError, training_lock

    monkeypatch.chdir(tmp_path)
    with training_lock(tmp_path / "models/.train.lock"):
        with pytest.raises(TrainingLockError, match=rf"another training run \(pid {os.getpid()}\)"):
            train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path)
    train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path)  # free again: trains


_SLEEPER = (
    "import os, time; from cxr.lifetime import die_with_launcher; "
    "print(die_with_launcher(), os.getppid(), flush=True); time.sleep(60)"
)
_STAGE = (  # any stage: @stage calls die_with_launcher before main (issue 24: decode and crossval ran on)
    "import os, time; from cxr.lifetime import launcher_pid; from cxr.stage import stage; "
    "main = lambda: (print(launcher_pid(), os.getppid(), flush=True), time.sleep(60)); "
    "stage('decode')(main)()"
)
_LAUNCHER = (
    "import subprocess, sys, time; "
    "subprocess.Popen(['/bin/sh', '-c', sys.argv[1] + ' -c \"' + sys.argv[2] + '\"; true']); time.sleep(60)"
)


@pytest.mark.slow
@pytest.mark.parametrize("under_dvc, code", [(True, _SLEEPER), (False, _SLEEPER), (True, _STAGE), (False, _STAGE)])
def test_a_trainer_started_through_sh_dies_with_dvc_not_with_a_terminal(tmp_path, under_dvc, code):
    """Issue 14, finding 8, as CI runs it: with SHELL unset dvc runs a stage as `/bin/sh -c CMD` and dash
    keeps the shell alive as the trainer's parent, so the kernel's parent-death signal never fires when
    dvc is killed. Under dvc (DVC_STAGE set) the trainer watches dvc itself and ends within a second or
    two; started by a person's shell (no DVC_STAGE) it is left alone, so `nohup` runs survive."""
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    if under_dvc:
        env["DVC_STAGE"] = "train"
    out = tmp_path / "out.txt"
    with out.open("w") as sink:  # "dvc": a python process running sh -c "python -c SLEEPER; true"
        dvc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, sys.executable, code],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 60
    while not out.read_text().strip():
        assert time.monotonic() < deadline, "the trainer did not start"
        time.sleep(0.05)
    launcher, parent = out.read_text().split()
    assert parent != str(dvc.pid)  # a shell stands between, as under dash
    assert launcher == (str(dvc.pid) if under_dvc else "None")
    trainer = int(
        subprocess.run(
            ["pgrep", "-f", "-P", parent, "launcher"], capture_output=True, text=True
        ).stdout.split()[0]
    )
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    try:
        for _ in range(100):
            if not os.path.exists(f"/proc/{trainer}") or open(f"/proc/{trainer}/stat").read().split(") ")[1][0] == "Z":
                break
            time.sleep(0.05)
        alive = os.path.exists(f"/proc/{trainer}") and open(f"/proc/{trainer}/stat").read().split(") ")[1][0] != "Z"
        assert alive is not under_dvc, "under dvc the trainer must end with it; from a shell it must run on"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer, signal.SIGKILL)


def test_a_zip_bomb_is_refused_before_it_expands(tmp_path):
    import time
    import zipfile

    from cxr.data.archives import ArchiveError, Limits, safe_extract

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("xrays/train/normal/a.png", b"\0" * (200 << 20))  # 200 MiB of zeros in ~200 KiB
    assert bomb.stat().st_size < 1 << 20
    start = time.perf_counter()
    with pytest.raises(ArchiveError, match=r"member 'xrays/train/normal/a.png' expands .*-fold; refusing a zip bomb"):
        safe_extract(bomb, tmp_path / "out")
    assert time.perf_counter() - start < 5 and not (tmp_path / "out").exists()

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(30):
            zf.writestr(f"d/{i}.png", b"x" * 1000)
    with pytest.raises(ArchiveError, match=r"30 members, over data.max_members=10"):
        safe_extract(many, tmp_path / "out", Limits(max_members=10))
    with pytest.raises(ArchiveError, match=r"expands to 30,000 bytes, over data.max_extracted_bytes=10,000"):
        safe_extract(many, tmp_path / "out", Limits(max_bytes=10_000))
    safe_extract(many, tmp_path / "ok")
    assert len(list((tmp_path / "ok/d").iterdir())) == 30


@pytest.mark.parametrize("bad", ["truncated", "bomb"])
def test_a_bad_image_in_unsplit_data_follows_verify_on_corrupt(tmp_path, demo_root, capsys, bad):
    """Finding 11: `{class}/file` data is split by download, which decodes every image; a file that
    does not decode (or is a pixel bomb) fails by name under on_corrupt: fail, and under skip is
    split on its own and left out by verify, listed in metrics/data.json."""
    from PIL import Image

    from cxr.data.grouping import Grouping
    from stages.verify import verify

    folder = tmp_path / "flat"
    for png in sorted(demo_root.glob("*/*/*.png")):
        (folder / png.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.parent.name / f"{png.parent.parent.name}_{png.name}")
    broken = folder / "normal" / "broken.png"
    if bad == "truncated":
        broken.write_bytes(next((folder / "normal").glob("*.png")).read_bytes()[:200])
    else:
        Image.new("L", (3000, 3000)).save(broken)  # 9 M pixels, over the 4 M limit below
    with pytest.raises(DatasetError, match=r"broken\.png.*verify\.on_corrupt: skip"):
        sources.write_dataset(_folder_params(folder), 0, tmp_path / "fail", Grouping(max_pixels=4_000_000))

    out = tmp_path / "split"
    sources.write_dataset(_folder_params(folder), 0, out, Grouping(max_pixels=4_000_000, skip_corrupt=True))
    assert "broken.png" in capsys.readouterr().out
    assert len(list(out.rglob("broken.png"))) == 1
    raw = tiny_params_dict()
    raw["verify"].update(on_corrupt="skip", max_pixels=4_000_000)
    shaped = verify(parse_params(raw), out, tmp_path / "d.json", tmp_path / "r.md")
    assert shaped["total"] == 48  # every demo image, without the broken one
    assert "broken.png" in (tmp_path / "d.json").read_text()


def test_a_root_labels_csv_in_a_pinned_archive_cannot_reach_outside_it(tmp_path, demo_root, monkeypatch):
    """Finding 1 through data.source url: the archive's labels.csv names `../../../../x/secret.txt`;
    download refuses by file and line, and no copy of the host file lands anywhere."""
    import hashlib
    import io
    import threading
    import zipfile

    from tests.data.test_sources import ArchiveServer, _url_params

    secret = tmp_path / "x" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("host secret")
    folder = tmp_path / "set"
    _csv_dataset(folder, demo_root, "../../../../x/secret.txt")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"set/{path.relative_to(folder).as_posix()}")
    body = buffer.getvalue()
    http = ArchiveServer()  # tests/data/test_sources.py's local HTTP server on 127.0.0.1
    threading.Thread(target=http.serve_forever, daemon=True).start()
    http.files["set.zip"] = body
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "DOWNLOAD_DIR", tmp_path / "downloads")
    out = tmp_path / "unpacked"
    out.mkdir()
    params = _url_params(http.url("set.zip"), hashlib.sha256(body).hexdigest())
    try:
        with pytest.raises(DatasetError, match=r"labels.csv:22: path '../../../../x/secret.txt' contains '\.\.'"):
            sources.write_dataset(params.data, 0, out)
    finally:
        http.shutdown()
        http.server_close()
    assert [p for p in tmp_path.rglob("secret.txt") if p != secret] == []


@pytest.mark.parametrize(("key", "value", "says"), [("image_size", 100000, "image_size: 100000"),
                                                     ("image_size", 0, "image_size: 0"),
                                                     ("hidden", [10**9], "hidden: [1000000000]"),
                                                     ("classes", ["c"] * 5000, "classes: 5000")])  # fmt: skip
def test_a_checkpoint_spec_is_held_to_params_bounds_before_anything_is_built(tmp_path, key, value, says):
    """Issue 24, hole 3: a checkpoint's spec is read from a file; `image_size: 100000` grew predict to
    22.6 GB before. Now it is refused by name, before the network or any image buffer is allocated."""
    spec = {"arch": "resnet18", "classes": ["a", "b"], "task": "binary", "loss": "ce", "hidden": [], "dropout": 0.0,
            "activation": "relu", "keep_classifier": False, "image_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3,
            "preprocessing": "gray8-square-bilinear"}  # fmt: skip
    spec[key] = value
    torch.save({"format": 3, "spec": spec, "model": {}}, tmp_path / "evil.pt")
    refused = "evil.pt: its spec is outside what this pipeline builds: " + re.escape(says)
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(tmp_path / "evil.pt")
