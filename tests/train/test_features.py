"""The decode-once store, batch augmentation and the frozen-feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.config import parse_params
from cxr.data.decoding import Decoder, build_store
from cxr.data.demo import write_demo_dataset
from cxr.data.splits import scan_split
from cxr.data.store import SplitStore, StoreError, decode_image
from cxr.evaluate.scores import classification_scores
from cxr.model.checkpoint import load_checkpoint
from cxr.model.decisions import probabilities
from cxr.model.inference import Runtime, predict_logits
from cxr.train import run as train_run
from cxr.train.augment import augment_batch, is_active
from cxr.train.features import FeatureCacheError, cache_features
from stages.decode import decode
from tests.conftest import tiny_params_dict, train_on


def test_store_holds_every_split_decoded_once(tmp_path, demo_root):
    skip = frozenset({demo_root / "train/infected/infected_00003.png"})
    counts = build_store(demo_root, tmp_path / "one", 40, multilabel=False, exclude=skip, decoder=Decoder(workers=1))
    build_store(demo_root, tmp_path / "two", 40, multilabel=False, exclude=skip, decoder=Decoder(workers=2))
    for name in ("train", "val", "test"):
        assert (tmp_path / "one" / f"{name}.npy").read_bytes() == (tmp_path / "two" / f"{name}.npy").read_bytes()
        split = scan_split(demo_root, name, exclude=skip)
        store = SplitStore(tmp_path / "one", name, 40)
        assert len(store) == counts[name] == len(split.files)
        assert store.files == tuple(f.relative_to(demo_root).as_posix() for f in split.files)
        assert np.array_equal(store.labels, split.labels)
        rows = [len(store) - 1, 0, 5]
        for row, got in zip(rows, store[rows], strict=True):
            assert np.array_equal(got.numpy(), decode_image(split.files[row], 40))
        # the stored file is a plain .npy: numpy reads the same rows
        assert np.array_equal(np.load(tmp_path / "one" / f"{name}.npy", mmap_mode="r")[5], store[[5]][0].numpy())
    assert "train/infected/infected_00003.png" not in SplitStore(tmp_path / "one", "train").files


def test_store_refuses_other_sizes_and_truncated_files(tmp_path, demo_root):
    build_store(demo_root, tmp_path / "s", 32, multilabel=False, decoder=Decoder(workers=1))
    with pytest.raises(StoreError, match=r"stored at 32 px but the model needs 64 px"):
        SplitStore(tmp_path / "s", "val", 64)
    with pytest.raises(StoreError, match=r"decoded image store not found; run `dvc repro decode`"):
        SplitStore(tmp_path / "missing", "val")
    path = tmp_path / "s" / "val.npy"
    path.write_bytes(path.read_bytes()[:-100])
    store = SplitStore(tmp_path / "s", "val")
    store[[0]]
    with pytest.raises(StoreError, match=r"val.npy: truncated at row"):
        store[[len(store) - 1]]


def test_store_keeps_multilabel_rows(tmp_path):
    raw = tiny_params_dict()
    raw["data"]["task"] = "multilabel"
    raw["train"]["loss"] = "bce"
    params = parse_params(raw)
    write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    build_store(tmp_path / "raw", tmp_path / "s", 32, multilabel=True, decoder=Decoder(workers=1))
    store = SplitStore(tmp_path / "s", "train")
    split = scan_split(tmp_path / "raw", "train", multilabel=True)
    assert store.multilabel and store.labels.shape == (len(split.files), 3)
    assert np.array_equal(store.labels, split.labels) and (store.labels.sum(1) == 2).any()


def _augment_cfg(**values):
    raw = tiny_params_dict()
    raw["train"]["augment"].update(values)
    return parse_params(raw).train.augment


def test_augmentation_is_seeded_and_does_what_each_param_says():
    x = torch.rand(6, 3, 24, 24)
    assert not is_active(_augment_cfg())
    flipped = augment_batch(x, _augment_cfg(hflip=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    cfg = _augment_cfg(hflip=0.5, rotate=10.0, crop=0.7, brightness=0.2, contrast=0.2)
    assert is_active(cfg)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    ones = torch.full((4, 3, 8, 8), 0.5)
    lit = augment_batch(ones, _augment_cfg(brightness=0.5), torch.Generator().manual_seed(3))
    factors = lit[:, 0, 0, 0] / 0.5
    assert ((factors >= 0.5) & (factors <= 1.5)).all() and factors.std() > 0
    assert torch.allclose(lit, lit[:, :1, :1, :1].expand_as(lit))  # one factor per image


def _test_scores(work) -> dict:
    model, spec, _ = load_checkpoint(work / "models/model.pt")
    test = SplitStore(work / "data/decoded", "test", spec.image_size)
    runtime = Runtime(torch.device("cpu"))
    runtime.prepare_model(model)
    probs = probabilities(predict_logits(model, test, 16, runtime), spec.loss).numpy()
    return classification_scores(test.labels, probs, spec.classes)


def test_feature_cache_gives_the_same_model_as_the_full_forward_pass(tmp_path, demo_root, monkeypatch, capsys):
    overrides = {"freeze": "backbone", "epochs": 3, "lr": 0.05}
    overrides["head"] = {"hidden": [16], "dropout": 0.3, "activation": "relu", "keep_classifier": False}
    params = parse_params(tiny_params_dict(**overrides))
    fast_best = train_on(params, demo_root, tmp_path / "fast")
    assert "cached features from" in capsys.readouterr().out
    assert (tmp_path / "fast/data/features/train.pt").is_file()

    monkeypatch.setattr(train_run, "cache_applies", lambda cfg: (False, "forced for the test"))
    slow_best = train_on(params, demo_root, tmp_path / "slow")
    assert "full forward pass per batch (forced for the test)" in capsys.readouterr().out

    assert fast_best["epoch"] == slow_best["epoch"]
    assert fast_best["val_loss"] == pytest.approx(slow_best["val_loss"], abs=1e-4)
    fast, slow = _test_scores(tmp_path / "fast"), _test_scores(tmp_path / "slow")
    for key in ("accuracy", "f1_macro"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key
    for cls, scores in fast["per_class"].items():
        assert scores["roc_auc"] == pytest.approx(slow["per_class"][cls]["roc_auc"], abs=1e-3), cls
    a = torch.load(tmp_path / "fast/models/model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "slow/models/model.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_features_of_another_backbone_are_refused(tmp_path, demo_root):
    params = parse_params(tiny_params_dict(freeze="backbone", epochs=1))
    train_on(params, demo_root, tmp_path)
    other = tiny_params_dict(freeze="backbone", epochs=1)
    other["seed"] = 7  # weights: none: another seed is another random backbone
    with pytest.raises(FeatureCacheError, match=r"features of another backbone"):
        train_run.train(
            parse_params(other),
            tmp_path / "data/decoded",
            tmp_path / "m.pt",
            tmp_path / "l.pt",
            tmp_path / "live",
            tmp_path / "data/features",
        )
    unfrozen = parse_params(tiny_params_dict(freeze="none", epochs=1))
    cache_features(unfrozen, tmp_path / "data/decoded", tmp_path / "data/features")
    assert not (tmp_path / "data/features/train.pt").exists()
    with pytest.raises(FeatureCacheError, match=r"written for other params \(train.freeze is 'none'"):
        train_run.train(
            params,
            tmp_path / "data/decoded",
            tmp_path / "m.pt",
            tmp_path / "l.pt",
            tmp_path / "live",
            tmp_path / "data/features",
        )


def test_augmented_training_runs_the_full_model(tmp_path, demo_root, capsys):
    params = parse_params(
        tiny_params_dict(
            freeze="backbone",
            epochs=1,
            augment={**tiny_params_dict()["train"]["augment"], "hflip": 0.5, "rotate": 5.0, "brightness": 0.1},
        )
    )
    decode(params, demo_root, tmp_path / "data/decoded", tmp_path / "none.json")
    train_on(params, demo_root, tmp_path)
    out = capsys.readouterr().out
    assert "full forward pass per batch (train.augment is on" in out
    assert "nothing to cache" in out


@pytest.mark.slow
def test_low_memory_switches_the_allocator_before_training(tmp_path, demo_root, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train_run, "release_large_blocks", lambda: calls.append(True) or True)
    train_on(parse_params(tiny_params_dict(epochs=1, low_memory=True)), demo_root, tmp_path)
    assert calls == [True] and "allocations over 8 MiB are returned to the system" in capsys.readouterr().out
    train_on(parse_params(tiny_params_dict(epochs=1)), demo_root, tmp_path / "default")
    assert calls == [True]  # off by default
