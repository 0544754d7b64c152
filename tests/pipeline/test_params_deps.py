"""Each stage lists in dvc.yaml every params key it reads: run on the tiny demo with every read of a
params field recorded, and compare with the stage's `params:` (issue 24: download read verify.on_corrupt
and verify.max_pixels unlisted, so changing them reran nothing). Runtime knobs (cxr.config.RUNTIME_KEYS)
are deliberately unlisted."""

from __future__ import annotations

import yaml
from pydantic import BaseModel

import stages.download
from cxr.config import RUNTIME_KEYS, parse_params
from cxr.evaluate.run import evaluate
from cxr.train.features import cache_features
from cxr.train.pretrain import pretrain
from cxr.train.run import train
from stages.decode import decode
from stages.verify import verify
from tests.conftest import REPO, tiny_params_dict


class Reads:
    """Every params field (dotted key) read while recording, found by patching BaseModel attribute access."""

    def __init__(self, params, monkeypatch):
        self.prefixes: dict[int, str] = {}
        self._walk(params, "")
        self.keys: set[str] = set()
        original = BaseModel.__getattribute__

        def spy(model, name):
            value = original(model, name)
            prefix = self.prefixes.get(id(model))
            if prefix is not None and name in type(model).model_fields and not isinstance(value, BaseModel):
                self.keys.add(prefix + name)
            return value

        monkeypatch.setattr(BaseModel, "__getattribute__", spy)

    def _walk(self, model, prefix):
        self.prefixes[id(model)] = prefix
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                self._walk(value, f"{prefix}{name}.")

    def take(self) -> set[str]:
        keys, self.keys = self.keys, set()
        return keys


def _unlisted(stage: str, keys: set[str]) -> list[str]:
    listed = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage].get("params") or []
    if any(isinstance(entry, dict) for entry in listed):  # a whole params file
        return []
    return sorted(
        k for k in keys if k not in RUNTIME_KEYS and not any(k == e or k.startswith(f"{e}.") for e in listed)
    )


def test_every_stage_lists_the_params_it_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw_params = tiny_params_dict(epochs=1)
    raw_params["pretrain"].update(method="simclr", epochs=1, batch_size=8)  # so that pretrain reads all it may
    params = parse_params(raw_params)
    reads = Reads(params, monkeypatch)
    monkeypatch.setattr(stages.download, "load_params", lambda: params)
    raw, decoded, features = tmp_path / "data/raw", tmp_path / "data/decoded", tmp_path / "data/features"
    model, metrics = tmp_path / "models/model.pt", tmp_path / "metrics"
    runs = {
        "download": lambda: stages.download.main.__wrapped__(),
        "verify": lambda: verify(params, raw, metrics / "data.json", metrics / "data_report.md"),
        "decode": lambda: decode(params, raw, decoded, metrics / "data.json"),
        "pretrain": lambda: pretrain(params, decoded, raw, tmp_path / "models/pretrained.pt",
                                     tmp_path / "models/.last", metrics / "pretrain", metrics / "pretrain.json"),
        "features": lambda: cache_features(params, decoded, features),
        "train": lambda: train(params, decoded, model, tmp_path / "models/last.pt", metrics / "train", features),
        "evaluate": lambda: evaluate(
            params, model, decoded, raw, metrics / "test.json", metrics / "p.csv", metrics / "eval"
        ),
    }
    missing = {}
    for stage, run in runs.items():
        reads.take()
        run()
        keys = reads.take()
        assert keys, f"{stage}: no params read were recorded"
        missing[stage] = _unlisted(stage, keys)
    assert missing == {stage: [] for stage in runs}, "add these keys to the stages' params in dvc.yaml"
