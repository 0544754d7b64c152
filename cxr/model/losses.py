"""Losses by their params name (`train.loss`); cxr.model.decisions reads the outputs they train.

`ce` is a softmax over classes (one label per image). `bce` and `focal` put one sigmoid on each
class: for `data.task: multilabel` the targets are multi-hot rows, for single-label tasks the
class index is turned into a one-hot row. Focal loss is torchvision's `sigmoid_focal_loss`,
computed per element and only then averaged (averaging BCE first and then applying the focal
factor, a bug seen in the notebooks, weights nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_multi_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    if targets.dim() == 1:
        return nn.functional.one_hot(targets.long(), num_classes).float()
    return targets.float()


def make_loss(
    name: str,
    num_classes: int,
    focal_alpha: float | None = 0.25,
    focal_gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    uncertain: bool = False,
) -> LossFn:
    """Loss from its params name; targets are class indices (N,) or multi-hot rows (N, C).

    `label_smoothing` softens targets (ce: torch's label smoothing; bce/focal: 0/1 targets moved
    towards 0.5 by half of it). `class_weights` (C,) weights each class: ce weights the images by
    their class, bce/focal weight each class's column. `uncertain`: multi-hot rows hold NaN for uncertain
    findings (data.uncertain: ignore), which are left out: the loss is the mean over the known entries.
    """
    if name == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if name not in ("bce", "focal"):
        raise ValueError(f"train.loss: {name!r} is not one of ce, bce, focal")
    alpha = -1.0 if focal_alpha is None else focal_alpha  # torchvision: alpha < 0 disables weighting

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = _as_multi_hot(targets, num_classes)
        known = ~torch.isnan(y) if uncertain else None
        y = (torch.nan_to_num(y) if uncertain else y) * (1 - label_smoothing) + label_smoothing / 2
        if name == "bce":
            per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            per = sigmoid_focal_loss(logits, y, alpha=alpha, gamma=focal_gamma, reduction="none")
        if class_weights is not None:
            per = per * class_weights.to(per.device)
        if known is not None:  # no wait for the device: the count stays a tensor
            return (per * known).sum() / known.sum().clamp(min=1)
        return per.mean()

    return loss


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """`train.class_weights: balanced`: images / (classes x images of the class), from the training labels
    (class indices, or multi-hot rows where an image counts for each of its classes; uncertain ones do not)."""
    counts = np.nansum(labels, 0) if labels.ndim == 2 else np.bincount(labels, minlength=num_classes)
    counts = np.maximum(counts.astype(np.float64), 1.0)
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)
