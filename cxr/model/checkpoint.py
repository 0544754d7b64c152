"""The model checkpoint: weights plus everything evaluation and prediction need to rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.atomic import atomic_path
from cxr.errors import PipelineError
from cxr.model.networks import build_model

FORMAT_VERSION = 3


class CheckpointError(PipelineError, FileNotFoundError):
    """The checkpoint is missing or was written by an incompatible version."""


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds the network and its input pipeline, independent of params.yaml."""

    arch: str
    classes: tuple[str, ...]
    task: str
    loss: str  # ce: softmax outputs; bce/focal: one sigmoid per class
    hidden: tuple[int, ...]
    dropout: float
    activation: str
    keep_classifier: bool
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocessing: str  # how a file becomes the uint8 input (cxr.data.store.PREPROCESSING)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def build(self, weights: str = "none") -> nn.Module:
        return build_model(
            self.arch,
            len(self.classes),
            self.hidden,
            self.dropout,
            self.image_size,
            weights=weights,
            activation=self.activation,
            keep_classifier=self.keep_classifier,
        )


def save_checkpoint(path: Path | str, model: nn.Module, spec: ModelSpec, **extra) -> None:
    """Write weights (on the CPU) and spec atomically: a crash leaves the previous file intact."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT_VERSION, "spec": asdict(spec), "model": state, **extra}
    # saving through a file object keeps the random temp name out of the zip records,
    # so identical weights give an identical file (and an unchanged dvc.lock hash)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: Path | str) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model from a checkpoint; return (model in eval mode, spec, whole payload)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro train` first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload.get('format')!r}, expected {FORMAT_VERSION}")
    raw = payload["spec"]
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = spec.build()
    model.load_state_dict(payload["model"])
    model.eval()
    return model, spec, payload
