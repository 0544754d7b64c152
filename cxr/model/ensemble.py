"""Fold ensembles (`evaluate.ensemble: folds`): the cross-validation's fold models as one model.

`Ensemble` averages its members' probabilities and returns the logits of that average (the log
of the mean softmax for `ce`, the logit of the mean sigmoid for `bce`/`focal`), so everything
that scores, thresholds, explains or exports one network takes an ensemble unchanged: the
decision rule applied to its output gives back the averaged probabilities exactly.
`load_scorer` loads what a stage scores, one checkpoint or the members of an ensemble, with the
identity (sha256) that evaluate's thresholds are recorded under.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from cxr.checksums import sha256_of
from cxr.model.checkpoint import CheckpointError, load_checkpoint
from cxr.model.decisions import probabilities
from cxr.model.ood import FeatureDensity
from cxr.model.spec import ModelSpec

EPSILON = 1e-7  # probabilities are kept off 0 and 1 before their logits are taken


class Ensemble(nn.Module):
    """Members with one spec; forward: the logits of their mean probabilities."""

    def __init__(self, members: list[nn.Module], loss: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.loss = loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([probabilities(m(x).float(), self.loss) for m in self.members]).mean(0)
        mean = mean.clamp(EPSILON, 1 - EPSILON)
        return mean.log() if self.loss == "ce" else mean.log() - torch.log1p(-mean)


def member_paths(cv_dir: Path) -> list[Path]:
    """The fold checkpoints of a cross-validation folder, in fold order."""
    paths = sorted(Path(cv_dir).glob("fold*/model.pt"), key=lambda p: int(p.parent.name[4:] or 0))
    if not paths:
        raise CheckpointError(
            f"{cv_dir}: no fold checkpoints (fold*/model.pt); evaluate.ensemble: folds needs data.folds set and "
            "`dvc repro crossval` run first"
        )
    return paths


def scored_paths(ensemble: str, model_path: Path, cv_dir: Path) -> list[Path]:
    """What evaluate, external and export score under `evaluate.ensemble`: the model, or every fold model."""
    return member_paths(cv_dir) if ensemble == "folds" else [Path(model_path)]


def as_paths(scored: Path | str | list[Path]) -> list[Path]:
    """One checkpoint's path, or an ensemble's list of them, as a list."""
    return [Path(scored)] if isinstance(scored, (str, Path)) else [Path(p) for p in scored]


def identity(paths: list[Path]) -> str:
    """The sha256 a scored model is known by: its checkpoint's, or for an ensemble that of its members' in order."""
    if len(paths) == 1:
        return sha256_of(paths[0])
    return hashlib.sha256("\n".join(sha256_of(p) for p in paths).encode()).hexdigest()


def load_scorer(paths: list[Path]) -> tuple[nn.Module, ModelSpec, dict]:
    """The model one checkpoint holds, or the ensemble of several with one spec: (model in eval mode,
    spec, payload). The payload's `densities` holds each member's fitted feature density (None where its
    checkpoint has none); an ensemble's payload has `epoch` (each member's best epoch) and `members`."""
    if len(paths) == 1:
        model, spec, payload = load_checkpoint(paths[0])
        return model, spec, {**payload, "densities": [FeatureDensity.from_payload(payload.get("ood"))]}
    loaded = [load_checkpoint(p) for p in paths]
    spec = loaded[0][1]
    for path, (_, other, _) in zip(paths[1:], loaded[1:], strict=True):
        if other != spec:
            raise CheckpointError(f"{path}: its spec differs from {paths[0]}'s; an ensemble's members share one")
    model = Ensemble([m for m, _, _ in loaded], spec.loss).eval()
    return model, spec, {
        "epoch": [p["epoch"] for _, _, p in loaded],
        "members": [str(p) for p in paths],
        "densities": [FeatureDensity.from_payload(p.get("ood")) for _, _, p in loaded],
    }


def explained(model: nn.Module) -> nn.Module:
    """The network Grad-CAM reads: the model, or an ensemble's first member."""
    return model.members[0] if isinstance(model, Ensemble) else model
