"""Atomic writes, checkpoints, test scores and the prediction grid."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from cxr.atomic import atomic_dir, write_json
from cxr.data.images import open_rgb
from cxr.data.radiograph import BASE as PREPROCESSING
from cxr.data.splits import scan_split
from cxr.evaluate.gallery import Outcomes, pick_examples, prediction_grid
from cxr.evaluate.scores import classification_scores
from cxr.model.checkpoint import load_checkpoint, save_checkpoint
from cxr.model.inference import IMAGENET_MEAN, IMAGENET_STD
from cxr.model.spec import ModelSpec


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_failed_folder_build_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "raw"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_checkpoint_round_trip_predicts_the_same(tmp_path):
    spec = ModelSpec(
        "resnet18",
        ("a", "b", "c"),
        "multiclass",
        "ce",
        (8,),
        0.1,
        "gelu",
        False,
        32,
        IMAGENET_MEAN,
        IMAGENET_STD,
        PREPROCESSING,
    )
    model = spec.build().eval()
    path = tmp_path / "models" / "model.pt"
    save_checkpoint(path, model, spec, epoch=4)
    loaded, loaded_spec, payload = load_checkpoint(path)
    assert loaded_spec == spec and payload["epoch"] == 4
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))


def test_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        load_checkpoint(tmp_path / "model.pt")


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    scores = classification_scores(labels, probs, ["covid", "pneumonia", "normal"])
    preds = probs.argmax(1)
    assert scores["accuracy"] == pytest.approx((preds == labels).mean())
    assert scores["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert scores["per_class"]["pneumonia"]["f1"] == pytest.approx(f1_score(labels == 1, preds == 1))
    matrix = np.array(scores["confusion_matrix"]["rows_true_cols_pred"])
    assert matrix.sum() == 50 and matrix[0, 0] == ((labels == 0) & (preds == 0)).sum()
    assert sum(c["support"] for c in scores["per_class"].values()) == 50


def test_grid_shows_confident_right_and_wrong(demo_root):
    split = scan_split(demo_root, "test")
    labels = np.asarray(split.labels)
    probs = np.tile([[0.9, 0.1]], (len(labels), 1))
    probs[0] = [0.6, 0.4]
    preds = probs.argmax(1)
    outcomes = Outcomes(labels, probs, preds, split.classes, multilabel=False)
    correct, wrong = pick_examples(outcomes, 3)
    assert all(labels[i] == 0 for i in correct) and all(labels[i] == 1 for i in wrong)
    assert 0 not in correct  # less confident than the rest
    image = prediction_grid(lambda i: open_rgb(split.files[i]), outcomes, (correct, wrong))
    assert image.width == 3 * 160 and image.height > 2 * 160


def test_same_weights_give_byte_identical_checkpoints(tmp_path):
    spec = ModelSpec(
        "resnet18", ("a", "b"), "binary", "bce", (), 0.0, "relu", False, 32, IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING
    )
    model = spec.build()
    save_checkpoint(tmp_path / "one.pt", model, spec, epoch=1)
    save_checkpoint(tmp_path / "two.pt", model, spec, epoch=1)
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()


def test_a_failed_stage_under_dvc_says_how_to_restore_what_dvc_removed(tmp_path, monkeypatch, capsys):
    """Issue 13, item 8: DVC deletes models/model.pt before train runs; a failed run names it and the
    `dvc checkout` that restores it, and says nothing of the kind outside DVC or when nothing is missing."""
    from cxr.errors import PipelineError
    from cxr.stage import stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: x\n    outs:\n      - models/model.pt\n      - models/last.pt:\n"
        "          persist: true\n    metrics:\n      - metrics/summary/train.json:\n          cache: false\n"
    )
    (tmp_path / "models").mkdir()
    (tmp_path / "models/last.pt").write_bytes(b"state")

    @stage("train")
    def failing() -> None:
        raise PipelineError("train.lr: must be > 0")

    monkeypatch.setenv("DVC_STAGE", "train")
    with pytest.raises(SystemExit) as exit_info:
        failing()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "train: train.lr: must be > 0" in err
    assert "DVC removed models/model.pt, metrics/summary/train.json" in err
    assert "`dvc checkout models/model.pt`" in err  # cached: from the DVC cache
    assert "`git checkout -- metrics/summary/train.json`" in err  # issue 23, item 5: cache: false lives in git

    monkeypatch.delenv("DVC_STAGE")
    with pytest.raises(SystemExit):
        failing()
    assert "dvc checkout" not in capsys.readouterr().err

    @stage("train")
    def crashing() -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setenv("DVC_STAGE", "train")
    with pytest.raises(RuntimeError):
        crashing()
    assert "dvc checkout models/model.pt" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal_unless_forced(monkeypatch):
    """Issue 13, item 8: `dvc queue logs` and CI logs get no tqdm redraws; CXR_PROGRESS forces either way."""
    import io
    import sys

    from cxr.progress import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CXR_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress(range(3)).disable
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not progress(range(3)).disable
    assert progress(range(3), disable=True).disable  # a caller's own reason (not the main process) stays
    monkeypatch.setenv("CXR_PROGRESS", "0")
    assert progress(range(3)).disable
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("CXR_PROGRESS", "1")
    assert not progress(range(3)).disable
