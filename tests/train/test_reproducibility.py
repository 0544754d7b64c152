"""What a run reproduces (issue 23, item 2): the thread count it ran on is recorded; the same params and
threads give the same model bytes; scoring agrees across 1, 2 and 4 threads within 1e-5 (training does not:
docs/reproducibility.md); the deterministic switch reaches PyTorch."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cxr.data.store import SplitStore
from cxr.model.checkpoint import load_checkpoint
from cxr.model.inference import Runtime, pin_compute, predict_logits
from tests.train.test_run import _run


@pytest.fixture(autouse=True)
def _threads_back():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_a_run_records_its_threads_and_repeats_itself_on_them(tmp_path, demo_root, monkeypatch, capsys):
    first, best = _run(tmp_path, demo_root, monkeypatch, "a", epochs=1, threads=1)
    assert re.search(r"epoch 1/1: lr .* \| training \d+\.\d s, \d+ img/s", capsys.readouterr().out)  # issue 23, item 10
    assert torch.get_num_threads() == 1 and best["environment"]["threads"] == 1
    summary = json.loads((first / "metrics/train/metrics.json").read_text())
    assert summary["environment"]["threads"] == 1 and summary["environment"]["torch"] == torch.__version__
    assert summary["environment"]["cpu"] and summary["environment"]["device"] == "cpu"
    again, _ = _run(tmp_path, demo_root, monkeypatch, "b", epochs=1, threads=1)
    a = torch.load(first / "models/model.pt", weights_only=True)["model"]
    b = torch.load(again / "models/model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same params, same threads: the same weights

    model, _, _ = load_checkpoint(first / "models/model.pt")
    store = SplitStore(first / "data/decoded", "test", 32)
    probs = {}
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        probs[threads] = predict_logits(model, store, 8, Runtime.select("fp32")).softmax(1)
    for threads in (2, 4):
        assert (probs[threads] - probs[1]).abs().max() < 1e-5
        assert torch.equal(probs[threads].argmax(1), probs[1].argmax(1))


def test_the_deterministic_switch_reaches_pytorch():
    environment = pin_compute(threads=3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert environment["threads"] == 3 and environment["deterministic"] is True
    assert not torch.backends.cudnn.benchmark
