"""Resume after a kill (cxr/train/state.py, cxr/train/log.py, cxr/atomic.py): the resumed run equals an
uninterrupted one, a state of other params is refused, the best model DVC removed comes back, the second
name survives a replaced last.pt and a kill mid-relink, and curve rows of an unsaved epoch go."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cxr.config import parse_params
from cxr.train import run as train_run
from cxr.train.state import ResumeError
from tests.conftest import REPO as REPO_ROOT
from tests.conftest import tiny_params_dict, train_on
from tests.train.test_run import _run


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, demo_root, monkeypatch):
    params = {"epochs": 4, "head": {"hidden": [16], "dropout": 0.3, "activation": "relu", "keep_classifier": False}}
    full, best_full = _run(tmp_path, demo_root, monkeypatch, "full", **params)

    real_epoch = train_run.train_epoch

    def interrupted(*args, **kwargs):
        if kwargs["epoch"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_run, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, demo_root, monkeypatch, "resumed", **params)
    assert torch.load(tmp_path / "resumed/models/last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train_run, "train_epoch", real_epoch)
    resumed, best_resumed = _run(tmp_path, demo_root, monkeypatch, "resumed", resume=True, **params)

    assert best_resumed == best_full
    a = torch.load(full / "models/model.pt", weights_only=True)["model"]
    b = torch.load(resumed / "models/model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for tsv in ("train/loss.tsv", "val/f1.tsv", "lr.tsv"):
        path = f"metrics/train/plots/metrics/{tsv}"
        assert (full / path).read_text() == (resumed / path).read_text(), tsv
    assert json.loads((full / "metrics/train/metrics.json").read_text()) == json.loads(
        (resumed / "metrics/train/metrics.json").read_text()
    )


def test_resume_refuses_a_checkpoint_from_other_params(tmp_path, demo_root, monkeypatch):
    _run(tmp_path, demo_root, monkeypatch, "run", epochs=1)
    refused = r"last.pt \(after epoch 1\) differs in train.epochs 1 -> 2, train.lr \S+ -> 0.05"
    with pytest.raises(ResumeError, match=refused):
        _run(tmp_path, demo_root, monkeypatch, "run", epochs=2, lr=0.05, resume=True)


def test_resume_refuses_a_state_trained_on_other_data(tmp_path, demo_root, monkeypatch):
    """Issue 24: with train.resume left set and the dataset changed, the finished old run was "resumed"
    for 0 epochs and the old data's model saved as the new one: the signature now holds the data."""
    _run(tmp_path, demo_root, monkeypatch, "run", epochs=1, resume=True)
    sorted((demo_root / "train" / "normal").glob("*.png"))[0].unlink()  # the dataset changes
    with pytest.raises(ResumeError, match=r"differs in the training data \(data/decoded holds other images"):
        _run(tmp_path, demo_root, monkeypatch, "run", epochs=1, resume=True)


@pytest.mark.parametrize("damage", ["empty", "text", "truncated", "foreign", "corrupt second copy"])
def test_a_damaged_training_state_is_named_not_a_traceback(tmp_path, demo_root, monkeypatch, damage):
    """Issue 24: resume on a truncated, foreign or text last.pt (or a corrupt second copy) was a raw
    traceback. A damaged copy is named; a good second copy is still resumed from."""
    work, _ = _run(tmp_path, demo_root, monkeypatch, "run", epochs=1)
    last, shadow = work / "models/last.pt", work / "models/.last.resume.pt"
    good = last.read_bytes()
    target = shadow if damage == "corrupt second copy" else last
    for p in (last, shadow):
        p.unlink()
    if damage == "corrupt second copy":
        last.write_bytes(good)
    if damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, target)
    else:
        damaged = {"empty": b"", "text": b"epoch 3\n", "truncated": good[: len(good) // 2]}
        target.write_bytes(damaged.get(damage, good[:99]))
    if damage == "corrupt second copy":
        _run(tmp_path, demo_root, monkeypatch, "run", epochs=1, resume=True)  # resumes from the good copy
        assert torch.load(last, weights_only=True)["epoch"] == 1
        return
    says = {"empty": "is empty", "foreign": "is not a training state this pipeline"}.get(damage, "is not a training")
    with pytest.raises(ResumeError, match=rf"last.pt {says}.*set train.resume: false to start afresh \(or delete"):
        _run(tmp_path, demo_root, monkeypatch, "run", epochs=2, resume=True)


def test_a_killed_checkpoint_write_is_ignored_by_git_and_removed_by_the_next_one(tmp_path):
    """A trainer killed inside torch.save leaves a partial temp file (134 MB for VGG16's training
    state); it is named by its dead owner, so git ignores it and the next save removes it."""
    import subprocess
    import sys

    from cxr.atomic import atomic_path, write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    partial = tmp_path / f".last.pt.pid{int(dead.stdout)}.k3x.tmp"
    partial.write_bytes(b"half a checkpoint")
    other = tmp_path / f".model.pt.pid{int(dead.stdout)}.k3x.tmp"  # another file's: left to its own writer
    other.write_bytes(b"half")
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert tmp.name.startswith(f".last.pt.pid{os.getpid()}.")
        tmp.write_bytes(b"state")
    assert not partial.exists() and other.exists() and (tmp_path / "last.pt").read_bytes() == b"state"
    write_text(tmp_path / "model.pt", "x")
    assert not other.exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "models/.last.pt.pid123.k3x.tmp"], cwd=REPO_ROOT)
    assert ignored.returncode == 0


def test_a_kill_while_relinking_the_shadow_leaves_the_old_shadow(tmp_path, monkeypatch):
    """The training state's second name is replaced by rename: killed between the two steps, the
    old name still holds the previous state (an unlink first would leave none to resume from)."""
    from cxr.atomic import link_or_copy

    (tmp_path / "last.pt").write_bytes(b"epoch 2")
    link_or_copy(tmp_path / "last.pt", tmp_path / ".last.resume.pt")
    (tmp_path / "new").write_bytes(b"epoch 3")
    os.replace(tmp_path / "new", tmp_path / "last.pt")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        link_or_copy(tmp_path / "last.pt", tmp_path / ".last.resume.pt")
    assert (tmp_path / ".last.resume.pt").read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.resume.pt", "last.pt"]
    monkeypatch.undo()
    link_or_copy(tmp_path / "last.pt", tmp_path / ".last.resume.pt")
    assert (tmp_path / ".last.resume.pt").stat().st_ino == (tmp_path / "last.pt").stat().st_ino


def _interrupted_at_epoch_3(tmp_path, demo_root, monkeypatch):
    """A 4-epoch run whose validation F1 only falls after epoch 1, killed during epoch 3."""
    from cxr.train import run as run_module

    real_eval, real_train, calls = run_module.evaluate_epoch, run_module.train_epoch, {"n": 0}

    def falling(*args, **kwargs):
        calls["n"] += 1
        result = real_eval(*args, **kwargs)
        result.f1 = 1.0 / calls["n"]  # the best epoch is the first
        return result

    def killed(*args, **kwargs):
        if kwargs["epoch"] == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_epoch", falling)
    monkeypatch.setattr(run_module, "train_epoch", killed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_on(parse_params(tiny_params_dict(epochs=4)), demo_root, tmp_path)
    monkeypatch.setattr(run_module, "train_epoch", real_train)
    return torch.load(tmp_path / "models/model.pt", weights_only=True)


@pytest.mark.slow
def test_resume_keeps_the_best_model_that_dvc_removed(tmp_path, demo_root, monkeypatch):
    best_before = _interrupted_at_epoch_3(tmp_path, demo_root, monkeypatch)
    assert best_before["epoch"] == 1
    (tmp_path / "models/model.pt").unlink()  # what `dvc repro` does to a non-persistent output
    train_on(parse_params(tiny_params_dict(epochs=4, resume=True)), demo_root, tmp_path)
    after = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert after["epoch"] == 1 and all(torch.equal(after["model"][k], best_before["model"][k]) for k in after["model"])


def test_resume_continues_the_interrupted_state_when_last_pt_was_replaced(tmp_path, demo_root, monkeypatch, capsys):
    from cxr.train.state import shadow_of

    _interrupted_at_epoch_3(tmp_path, demo_root, monkeypatch)
    last = tmp_path / "models/last.pt"
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 2 and shadow_of(last).is_file()
    state["epoch"] = 0  # `dvc exp run` checked out an older (committed) last.pt over the interrupted one
    last.unlink()
    torch.save(state, last)
    train_on(parse_params(tiny_params_dict(epochs=4, resume=True)), demo_root, tmp_path)
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(last, weights_only=True)["epoch"] == 4
    losses = (tmp_path / "metrics/train/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    assert [int(row.split("\t")[0]) for row in losses] == [0, 1, 2, 3]  # steps in order, none repeated


def test_a_resumed_state_brings_its_own_curves(tmp_path, demo_root, monkeypatch):
    """Issue 24: after a killed `dvc exp run -S train.lr=...`, `dvc exp run -S train.resume=true` (the
    committed params) resumed the committed, finished state but kept the killed run's curves on disk.
    The state holds its run's curves; a resume puts them back."""
    work, _ = _run(tmp_path, demo_root, monkeypatch, "run", epochs=2, resume=True)
    live = work / "metrics/train/plots/metrics"
    committed = {p: p.read_text() for p in sorted(live.rglob("*.tsv"))}
    assert committed and all(text.count("\n") == 3 for text in committed.values())  # header + 2 epochs
    for curve in committed:  # what the killed run with other params left
        curve.write_text(curve.read_text().splitlines()[0] + "\n0\t9.0\n1\t9.0\n")
    (live / "killed_only.tsv").write_text("step\tx\n0\t1\n")
    _run(tmp_path, demo_root, monkeypatch, "run", epochs=2, resume=True)
    assert {p: p.read_text() for p in sorted(live.rglob("*.tsv"))} == committed


def test_resume_drops_the_curve_rows_of_an_epoch_the_state_does_not_hold(tmp_path):
    """Finding 8's other half: killed after dvclive wrote epoch 4's rows but before the state was
    saved, the resumed run repeats epoch 4; its earlier rows go, so no step appears twice."""
    from cxr.train.log import trim_curves

    curve = tmp_path / "live/plots/metrics/val/f1.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tf1\n0\t0.5\n1\t0.6\n2\t0.7\n3\t0.1\n")
    untouched = tmp_path / "live/plots/metrics/lr.tsv"
    untouched.write_text("step\tlr\n0\t0.1\n1\t0.1\n2\t0.1\n")
    trim_curves(tmp_path / "live", 3)
    assert curve.read_text() == "step\tf1\n0\t0.5\n1\t0.6\n2\t0.7\n"
    assert untouched.read_text() == "step\tlr\n0\t0.1\n1\t0.1\n2\t0.1\n"
