"""How far an image's features lie from the training films: class-conditional Mahalanobis distance
with a shared covariance (Lee et al., 2018), fitted on the training split and kept in the checkpoint.

The features are the spatial mean of the layer Grad-CAM reads for the family (cxr/model/
architectures.py: ResNet's `layer4`, which is exactly the head's input, VGG's `features`, a ViT's
last block, averaged over its tokens): one vector per image, 512 wide for ResNet18 and VGG16, where
VGG's flattened 25,088-wide head input would need a covariance of 2.5 GB. The covariance is the
Ledoit-Wolf shrinkage estimate (scikit-learn): a few hundred films do not determine a 512 x 512
matrix, and the plain inverse of the sample covariance would call every new film far away.

`FeatureTap` collects, during an ordinary forward pass of a model or fold ensemble, each member's
features, its own logits, and (for MC dropout) logits of its head sampled with dropout on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf
from torch import nn

from cxr.model.architectures import family_of, resolve
from cxr.model.inference import predict_logits
from cxr.model.networks import head_name

FIT_LIMIT = 20_000  # training films the density is fitted on at most (evenly spaced, so deterministic)


def feature_layer(model: nn.Module) -> str:
    """The dotted name of the layer whose output, averaged over space (or tokens), is the feature vector."""
    return resolve(model, family_of(model).gradcam)


def pooled(output) -> torch.Tensor:
    """A layer's output as one float32 row per image: (N, C, H, W) and (N, T, D) averaged over space or tokens."""
    out = output[0] if isinstance(output, tuple) else output
    if out.dim() == 4:
        out = out.float().mean((2, 3))
    elif out.dim() == 3:
        out = out.float().mean(1)
    return out.float().flatten(1)


@dataclass(frozen=True)
class FeatureDensity:
    """Gaussian per training group (a class, or a multi-label combination) with one shared precision matrix."""

    layer: str
    means: torch.Tensor  # (G, D)
    precision: torch.Tensor  # (D, D)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) the Mahalanobis distance of each row to the nearest group mean."""
        feats = features.double()
        precision, means = self.precision.double(), self.means.double()
        diff = feats[:, None, :] - means[None, :, :]  # (N, G, D)
        squared = torch.einsum("ngd,de,nge->ng", diff, precision, diff).clamp_min(0)
        return squared.min(1).values.sqrt().float()

    def payload(self) -> dict:
        """What the checkpoint stores (tensors and a string: loadable with weights_only)."""
        return {"layer": self.layer, "means": self.means.contiguous(), "precision": self.precision.contiguous()}

    @classmethod
    def from_payload(cls, payload: dict | None) -> FeatureDensity | None:
        if not payload:
            return None
        return cls(str(payload["layer"]), payload["means"].float(), payload["precision"].float())


def groups_of(labels: np.ndarray) -> np.ndarray:
    """A group index per film: its class, or for multi-label rows each distinct combination."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    _, index = np.unique(labels.astype(np.int64), axis=0, return_inverse=True)
    return index.reshape(-1)


def fit_density(features: torch.Tensor, labels: np.ndarray, layer: str) -> FeatureDensity:
    """Group means and the shrunk shared covariance of the residuals, inverted."""
    feats = features.double().numpy()
    groups = groups_of(labels)
    present = np.unique(groups)
    means = np.stack([feats[groups == g].mean(0) for g in present])
    residuals = feats - means[np.searchsorted(present, groups)]
    covariance, _ = ledoit_wolf(residuals, assume_centered=True)
    precision = np.linalg.pinv(covariance, hermitian=True)
    return FeatureDensity(layer, torch.from_numpy(means).float(), torch.from_numpy(precision).float())


def fit_indices(n: int, limit: int = FIT_LIMIT) -> np.ndarray:
    """Which of n training films the density is fitted on: all, or `limit` evenly spaced."""
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(np.int64)


class FeatureTap:
    """Forward hooks on each member of a model (one network, or an Ensemble's `members`) recording,
    per forward pass: its pooled features (`features`), its logits (`logits`) and, with `samples` > 0,
    that many logits of its head with dropout on (`sampled`, (S, N, C)) from a seeded generator."""

    def __init__(self, members: list[nn.Module], samples: int = 0, seed: int = 0):
        self.members, self.samples, self.seed = members, samples, seed
        self.features: list[list[torch.Tensor]] = [[] for _ in members]
        self.logits: list[list[torch.Tensor]] = [[] for _ in members]
        self.sampled: list[list[torch.Tensor]] = [[] for _ in members]
        self._hooks: list = []

    def __enter__(self) -> FeatureTap:
        for k, member in enumerate(self.members):
            layer = member.get_submodule(feature_layer(member))
            self._hooks.append(layer.register_forward_hook(lambda _m, _i, out, k=k: self.features[k].append(
                pooled(out).cpu())))  # fmt: skip
            self._hooks.append(member.register_forward_hook(lambda _m, _i, out, k=k: self.logits[k].append(
                out.float().cpu())))  # fmt: skip
            if self.samples:
                head = member.get_submodule(head_name(member))
                self._hooks.append(head.register_forward_hook(lambda m, inp, _o, k=k: self.sampled[k].append(
                    self._sample(m, inp[0]))))  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _sample(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + sum(len(s) for s in self.sampled))  # a fixed stream per batch
            head.train()
            try:
                # forward, not __call__: calling the head would fire this very hook again
                out = torch.stack([head.forward(x).float() for _ in range(self.samples)])
            finally:
                head.eval()
        return out.cpu()

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(features, logits, sampled) per member over the passes since the last take, in order."""

        def cat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
            return torch.cat(parts, dim) if parts else torch.empty(0)

        out = (
            [cat(f) for f in self.features],
            [cat(x) for x in self.logits],
            [cat(s, 1) for s in self.sampled],
        )
        for store in (self.features, self.logits, self.sampled):
            for part in store:
                part.clear()
        return out


def has_dropout(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())


class _Rows:
    """The chosen rows of an indexable image source, indexable from 0."""

    def __init__(self, images, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.images[[int(self.rows[int(i)]) for i in idx]]


def training_density(model: nn.Module, images, labels: np.ndarray, runtime, batch_size: int) -> FeatureDensity:
    """The density of `model`'s features over training images (a SplitStore or uint8 tensor; at most
    FIT_LIMIT of them, evenly spaced) with their labels, the images as evaluation sees them (no augmentation)."""
    rows = fit_indices(len(images))
    with FeatureTap([model]) as tap:
        predict_logits(model, _Rows(images, rows), batch_size, runtime)
        features = tap.take()[0][0]
    return fit_density(features, np.asarray(labels)[rows], feature_layer(model))
