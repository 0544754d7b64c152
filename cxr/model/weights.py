"""Pretrained backbone weights: torchvision's ImageNet files or a local state-dict file."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import get_model_weights

from cxr.errors import PipelineError
from cxr.paths import PRETRAINED_PATH


class WeightsError(PipelineError, RuntimeError):
    """The requested weights cannot be had; the message says what to set instead."""


def imagenet_weights_url(arch: str) -> str:
    """URL of torchvision's default ImageNet weights for `arch`."""
    return get_model_weights(arch).DEFAULT.url


def imagenet_cache_file(arch: str) -> Path:
    """Where torch.hub keeps the downloaded file (respects TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights_url(arch)).name


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """Load ImageNet weights through torch.hub's cache, downloading them if absent.

    Fails loudly when they cannot be downloaded: training from scratch by accident would
    make a fine-tuning experiment silently meaningless.
    """
    url = imagenet_weights_url(arch)
    cached = imagenet_cache_file(arch)
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # noqa: BLE001 - network, HTTP and hash errors all end here
        raise WeightsError(
            f"train.weights=imagenet: cannot load {arch} ImageNet weights: {url} is not in the cache "
            f"({cached}) and downloading it failed ({type(exc).__name__}: {exc}).\n"
            f"Fix: on a machine without internet set `train.weights: none` to train from scratch, "
            f"or copy the file there and set `train.weights: path/to/{cached.name}` "
            f"(a local state-dict file), or place it at {cached}."
        ) from exc


def local_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Load a state dict from a file: a plain state dict or a checkpoint holding one under `model`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"train.weights={path}: file not found; give a path relative to the repository root")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"train.weights={path}: not a readable PyTorch state-dict file ({exc})") from exc
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"train.weights={path}: expected a mapping of parameter names to tensors")
    return loaded


PRETRAINED_FORMAT = "cxr-pretrained/1"  # models/pretrained.pt as stage pretrain writes it (cxr/train/pretrain.py)


def pretrained_state_dict(arch: str, path: Path | str = PRETRAINED_PATH) -> dict[str, torch.Tensor]:
    """The backbone stage pretrain wrote (tensors only), for `train.weights: pretrained`; refused by name when
    it is missing, holds no pretraining (pretrain.method none) or another network."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"train.weights=pretrained: {path} not found; run `dvc repro pretrain` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path}: not a file stage pretrain wrote ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != PRETRAINED_FORMAT:
        raise WeightsError(f"{path}: not a file stage pretrain wrote (format {PRETRAINED_FORMAT} expected)")
    if payload.get("method") == "none":
        raise WeightsError(f"train.weights=pretrained: {path} holds no backbone: set pretrain.method: simclr")
    if payload.get("arch") != arch:
        raise WeightsError(
            f"train.weights=pretrained: {path} holds a pretrained {payload.get('arch')}, not {arch}; "
            "`dvc repro` pretrains train.arch again"
        )
    return payload["backbone"]
