"""The frozen-feature cache: a frozen backbone's outputs, computed once instead of every epoch.

With `train.freeze: backbone` and augmentation off, the backbone maps each image to the same
vector in every epoch (it runs in eval mode, see `cxr.model.networks.train_mode`), so Task 1's sweeps
over learning rates and head widths need one forward pass per model over the data, not one
per epoch and run. The `features` stage writes `data/features/{train,val}.pt` and `info.json`
(with a digest of the backbone's weights); train checks the digest and trains the head alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from cxr.atomic import atomic_dir
from cxr.config import Params, TrainConfig
from cxr.data.radiograph import InputRecipe
from cxr.data.store import SplitStore
from cxr.errors import PipelineError
from cxr.model.inference import Runtime, pin_compute, predict_logits
from cxr.model.networks import head_name
from cxr.model.spec import initial_model
from cxr.paths import DECODED_DIR, FEATURES_DIR
from cxr.train.augment import is_active

FEATURES_FORMAT = 1
INFO = "info.json"
CACHED_SPLITS = ("train", "val")  # test is scored by evaluate on the whole checkpointed model
EXTRACT_BATCH = 64  # images per forward pass; changes only float rounding, not results


class FeatureCacheError(PipelineError, RuntimeError):
    """data/features does not belong to the model being trained."""


def cache_applies(cfg: TrainConfig) -> tuple[bool, str]:
    """Can the head train on cached features under these params? (yes or no, and why)"""
    if cfg.freeze != "backbone":
        return False, f"train.freeze is {cfg.freeze!r}, not 'backbone': the backbone learns, features change"
    if is_active(cfg.augment):
        return False, "train.augment is on: every epoch sees different images"
    return True, "train.freeze is 'backbone' and train.augment is off"


@contextlib.contextmanager
def without_head(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its new head swapped for an identity: its output is the head's input."""
    name = head_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    try:
        yield model
    finally:
        setattr(parent, attr, head)


def backbone_digest(model: nn.Module) -> str:
    """sha256 of every tensor outside the head: equal digests, equal features."""
    head = head_name(model) + "."
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if not key.startswith(head):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def extract(model: nn.Module, images, batch_size: int, runtime: Runtime) -> torch.Tensor:
    """The head's input for every image of a split (N, D) float32, in inference mode."""
    with without_head(model) as backbone:
        return predict_logits(backbone, images, batch_size, runtime).flatten(1)


def write_features(
    out_dir: Path, model: nn.Module, splits: dict, batch_size: int, runtime: Runtime, describe: dict
) -> dict[str, tuple[int, int]]:
    """Extract and save the features of each split in `splits` (name -> image store) atomically."""
    shapes = {}
    with atomic_dir(out_dir) as tmp:
        for name, images in splits.items():
            feats = extract(model, images, batch_size, runtime)
            with (tmp / f"{name}.pt").open("wb") as f:
                torch.save(feats, f)
            shapes[name] = tuple(feats.shape)
        info = {"format": FEATURES_FORMAT, "applies": True, "backbone_sha256": backbone_digest(model), **describe}
        info["shapes"] = shapes
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return shapes


def write_not_applicable(out_dir: Path, reason: str) -> None:
    """Record why no features were cached (the stage still has an output for DVC to track)."""
    with atomic_dir(out_dir) as tmp:
        (tmp / INFO).write_text(json.dumps({"format": FEATURES_FORMAT, "applies": False, "reason": reason}) + "\n")


def load_features(feature_dir: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The cached features of train and val, after checking they came from this backbone."""
    info_path = Path(feature_dir) / INFO
    if not info_path.is_file():
        raise FeatureCacheError(f"{info_path}: no feature cache; run `dvc repro features` (or the whole pipeline)")
    info = json.loads(info_path.read_text())
    if info.get("format") != FEATURES_FORMAT or not info.get("applies"):
        raise FeatureCacheError(
            f"{info_path}: written for other params ({info.get('reason', 'old format')}); run `dvc repro` so the "
            "features stage follows params.yaml"
        )
    if info["backbone_sha256"] != backbone_digest(model):
        raise FeatureCacheError(
            f"{info_path}: features of another backbone (train.arch, train.weights, train.image_size or seed "
            "changed); run `dvc repro` to extract them again"
        )
    return {name: torch.load(Path(feature_dir) / f"{name}.pt", weights_only=True) for name in CACHED_SPLITS}


def cache_features(params: Params, store_dir: Path = DECODED_DIR, out_dir: Path = FEATURES_DIR) -> None:
    """Write the backbone's features of train and val to `out_dir`, or why none apply."""
    cfg = params.train
    applies, why = cache_applies(cfg)
    if not applies:
        write_not_applicable(out_dir, why)
        print(f"features: nothing to cache ({why}); train runs the whole model")
        return
    start = time.perf_counter()
    pin_compute(cfg.threads, cfg.deterministic)
    recipe = InputRecipe.from_params(cfg.input).name
    stores = {name: SplitStore(store_dir, name, cfg.image_size, recipe) for name in CACHED_SPLITS}
    model, spec, _ = initial_model(params, stores["train"].classes)
    runtime = Runtime.select(cfg.precision).scaled(spec)
    runtime.prepare_model(model)
    describe = {"arch": cfg.network, "weights": cfg.weights, "image_size": cfg.image_size}
    shapes = write_features(out_dir, model, stores, EXTRACT_BATCH, runtime, describe)
    print(
        f"features: {cfg.network} backbone ran once over "
        + ", ".join(f"{name} {n} x {d}" for name, (n, d) in shapes.items())
        + f" on {runtime.device} in {time.perf_counter() - start:.1f} s -> {out_dir}/"
    )
