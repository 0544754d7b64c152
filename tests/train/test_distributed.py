"""Training in two processes (torchrun, gloo on the CPU) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.train.features import cache_features
from stages.decode import decode
from tests.conftest import REPO, tiny_params_dict, train_on
from tests.train.test_features import _test_scores

# Per-process BatchNorm statistics (each process sees half of every batch) and float rounding
# are the only differences from one process, so the scores agree closely but not bit for bit.
TOLERANCE = 0.05


def _column(tsv) -> list[float]:
    return [float(line.split("\t")[1]) for line in tsv.read_text().splitlines()[1:]]


def _params(**train) -> dict:
    raw = tiny_params_dict(epochs=3, batch_size=8, **train)
    raw["data"]["demo"].update(train_per_class=24, val_per_class=12, test_per_class=30)
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_two_processes_reach_the_metrics_of_one(tmp_path, freeze):
    raw = _params(freeze=freeze)
    params = parse_params(raw)
    write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    one = train_on(params, tmp_path / "raw", tmp_path / "one")

    work = tmp_path / "two"
    decode(params, tmp_path / "raw", work / "data/decoded", work / "none.json")
    cache_features(params, work / "data/decoded", work / "data/features")
    raw["train"]["nproc"] = 2  # the stage starts itself again under torchrun
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "stages.train"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m stages.train" in run.stdout
    assert run.stdout.count("train: best epoch") == 1  # only the first process reports
    assert "2 processes" in run.stdout

    summary = json.loads((work / "metrics/train/metrics.json").read_text())
    assert summary["best"]["epoch"] >= 1 and summary["step"] == 2
    curves = "metrics/train/plots/metrics"
    assert (work / curves / "lr.tsv").read_text() == (tmp_path / "one" / curves / "lr.tsv").read_text()
    if freeze == "backbone":  # BatchNorm frozen: the runs differ by float rounding only
        single, double = _test_scores(tmp_path / "one"), _test_scores(work)
        assert double["accuracy"] == pytest.approx(single["accuracy"], abs=TOLERANCE)
        assert double["f1_macro"] == pytest.approx(single["f1_macro"], abs=TOLERANCE)
        assert abs(summary["best"]["val_f1"] - one["val_f1"]) <= TOLERANCE
    else:
        # BatchNorm trains on each process's half batch, so 3 epochs from scratch on 48 images
        # (near chance) can end on either side of a decision; the same batches and steps show in
        # the training loss, which stays close epoch by epoch
        losses = [_column(root / curves / "train/loss.tsv") for root in (tmp_path / "one", work)]
        assert all(abs(a - b) <= 0.15 * a for a, b in zip(*losses, strict=True)), losses
    # one set of dvclive files: each epoch logged once
    assert (work / "metrics/train/plots/metrics/train/loss.tsv").read_text().count("\n") == 1 + 3
    assert sorted(p.name for p in (work / "metrics").iterdir()) == ["summary", "train"]
    compared = json.loads((work / "metrics/summary/train.json").read_text())  # written once, by the first process
    assert compared["best_epoch"] == summary["best"]["epoch"] and compared["val_f1"] == round(
        summary["best"]["val_f1"], 4
    )
