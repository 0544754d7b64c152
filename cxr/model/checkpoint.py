"""The model checkpoint (weights + spec) and the byte-stable atomic save it and the training state share."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from cxr.atomic import atomic_path
from cxr.config import HeadConfig, TrainConfig, field_problem
from cxr.errors import PipelineError
from cxr.model.spec import ModelSpec

FORMAT_VERSION = 3


class CheckpointError(PipelineError, FileNotFoundError):
    """The checkpoint is missing or was written by an incompatible version."""


def cpu_state(model: nn.Module | dict) -> dict[str, torch.Tensor]:
    state = model if isinstance(model, dict) else model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items()}


def save_payload(path: Path | str, payload: dict) -> None:
    """torch.save `payload` atomically, byte-stable for identical contents."""
    # saving through a file object keeps the random temp name out of the zip records,
    # so identical weights give an identical file (and an unchanged dvc.lock hash)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(payload, f)


def save_checkpoint(path: Path | str, model: nn.Module | dict, spec: ModelSpec, **extra) -> None:
    """Write weights (a model or its state dict; on the CPU) and spec atomically: a crash leaves the
    previous file intact."""
    save_payload(path, {"format": FORMAT_VERSION, "spec": asdict(spec), "model": cpu_state(model), **extra})


MAX_CLASSES = 1000  # an output layer wider than this is no chest X-ray model, and costs memory to build


def refuse_unbuildable(spec: ModelSpec, path: Path) -> None:
    """A spec is read from a file: hold its sizes to params.yaml's bounds before anything is allocated
    (an `image_size: 100000` would otherwise grow predict to tens of GB before failing)."""
    problems = [
        field_problem(section, key, value)
        for section, key, value in (
            (TrainConfig, "arch", spec.arch),
            (TrainConfig, "image_size", spec.image_size),
            (HeadConfig, "hidden", list(spec.hidden)),
            (HeadConfig, "dropout", spec.dropout),
        )
    ]
    if not 1 <= len(spec.classes) <= MAX_CLASSES:
        problems.append(f"classes: {len(spec.classes)} of them (1 to {MAX_CLASSES})")
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{path}: its spec is outside what this pipeline builds: {'; '.join(problems)}")


def load_checkpoint(path: Path | str) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model from a checkpoint; return (model in eval mode, spec, whole payload)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - empty, text, truncated or foreign files all end here
        raise CheckpointError(f"{path}: not a checkpoint this pipeline wrote ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {FORMAT_VERSION}")
    try:
        spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["spec"].items()})
        refuse_unbuildable(spec, path)
        model = spec.build()
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: its spec and weights do not make a model ({type(exc).__name__}: {exc})"
        ) from None
    model.eval()
    return model, spec, payload
