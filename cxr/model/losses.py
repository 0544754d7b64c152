"""Losses by their params name (`train.loss`); cxr.model.decisions reads the outputs they train.

`ce` is a softmax over classes (one label per image). `bce` and `focal` put one sigmoid on each
class: for `data.task: multilabel` the targets are multi-hot rows, for single-label tasks the
class index is turned into a one-hot row. Focal loss is torchvision's `sigmoid_focal_loss`,
computed per element and only then averaged (averaging BCE first and then applying the focal
factor, a bug seen in the notebooks, weights nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_multi_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    if targets.dim() == 1:
        return nn.functional.one_hot(targets.long(), num_classes).float()
    return targets.float()


def make_loss(name: str, num_classes: int, focal_alpha: float | None = 0.25, focal_gamma: float = 2.0) -> LossFn:
    """Loss from its params name; targets are class indices (N,) or multi-hot rows (N, C)."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "bce":
        return lambda logits, targets: nn.functional.binary_cross_entropy_with_logits(
            logits, _as_multi_hot(targets, num_classes)
        )
    if name == "focal":
        alpha = -1.0 if focal_alpha is None else focal_alpha  # torchvision: alpha < 0 disables weighting
        return lambda logits, targets: sigmoid_focal_loss(
            logits, _as_multi_hot(targets, num_classes), alpha=alpha, gamma=focal_gamma, reduction="mean"
        )
    raise ValueError(f"train.loss: {name!r} is not one of ce, bce, focal")
