"""Shared fixtures: tiny params and tiny demo datasets built in temporary folders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.train.features import cache_features
from cxr.train.run import train
from stages.decode import decode

REPO = Path(__file__).resolve().parents[1]


def tiny_params_dict(**train_overrides) -> dict:
    """The repository's params.yaml shrunk to a dataset and model that train in seconds."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["data"]["demo"].update(image_size=48, train_per_class=12, val_per_class=6, test_per_class=6)
    raw["train"].update(image_size=32, epochs=2, batch_size=8)
    raw["train"]["head"].update(hidden=[16], dropout=0.0)
    raw["train"].update(train_overrides)
    raw["evaluate"].update(grid_images=2)
    return raw


def train_on(params, raw_root: Path, work: Path) -> dict:
    """Run decode, features and train as the pipeline does, with outputs under `work`."""
    decode(params, raw_root, work / "data/decoded", work / "no-data.json")
    cache_features(params, work / "data/decoded", work / "data/features")
    return train(
        params,
        work / "data/decoded",
        work / "models/model.pt",
        work / "models/last.pt",
        work / "metrics/train",
        work / "data/features",
    )


@pytest.fixture
def tiny_params_raw() -> dict:
    return tiny_params_dict()


@pytest.fixture
def demo_root(tmp_path, tiny_params_raw) -> Path:
    params = parse_params(tiny_params_raw)
    root = tmp_path / "raw"
    write_demo_dataset(root, params.data, params.seed)
    return root
