"""From the network's outputs to decisions: one rule for training, evaluation and prediction.

- multi-label: each class is on where its probability reaches its threshold;
- two classes: the screened (positive) class is predicted where its probability reaches its
  threshold, the other class otherwise;
- more classes: the most probable class (no threshold).

A threshold left out (or None) is 0.5; `evaluate` fits them on validation (cxr.evaluate.screening).
Works on numpy arrays and on torch tensors (training decides on the device, without a copy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.5


def probabilities(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-class probabilities: softmax for `ce`, independent sigmoids for `bce`/`focal`."""
    return torch.softmax(logits, 1) if loss == "ce" else torch.sigmoid(logits)


def positive_class(classes: Sequence[str]) -> int:
    """The class a two-class screen looks for: the one not called 'normal' (else the first)."""
    others = [i for i, c in enumerate(classes) if c.lower() != "normal"]
    return others[0] if len(others) == 1 else 0


def screened_classes(classes: Sequence[str], multilabel: bool) -> list[int]:
    """Classes that get a threshold and a screening report: the positive class of a two-class
    task, every class otherwise (multi-class: one against the rest)."""
    if len(classes) == 2 and not multilabel:
        return [positive_class(classes)]
    return list(range(len(classes)))


def thresholded(classes: Sequence[str], multilabel: bool) -> bool:
    """Whether decisions depend on thresholds (multi-label, two classes) or are an argmax."""
    return multilabel or len(classes) == 2


def label_name(decision, classes: Sequence[str], multilabel: bool) -> str:
    """One decision (or true label) as text: the class name, or for multi-label the names of the
    classes that are on, joined by ';' (as predictions.csv, submission.csv and predict write them)."""
    if multilabel:
        return ";".join(c for c, on in zip(classes, decision, strict=True) if on)
    return classes[int(decision)]


def decide(probs, classes: Sequence[str], multilabel: bool, thresholds: Mapping[str, float | None] | None = None):
    """Decisions for probabilities (N, C): class indices (N,), or 0/1 rows (N, C) for multi-label."""
    cut = {c: t for c, t in (thresholds or {}).items() if t is not None}
    is_torch = isinstance(probs, torch.Tensor)
    if multilabel:
        limits = [cut.get(c, DEFAULT_THRESHOLD) for c in classes]
        on = probs >= (probs.new_tensor(limits) if is_torch else np.asarray(limits))
        return on.long() if is_torch else on.astype(np.int64)
    if len(classes) == 2:
        pos = positive_class(classes)
        on = probs[:, pos] >= cut.get(classes[pos], DEFAULT_THRESHOLD)
        on = on.long() if is_torch else on.astype(np.int64)
        return on if pos == 1 else 1 - on  # the positive index where on, the other one elsewhere
    return probs.argmax(1)
