"""Screening metrics for one positive class: threshold chosen on validation, bootstrap intervals, calibration.

Accuracy on a test set says little about a screening model. For each positive class this
module reports sensitivity, specificity, PPV, NPV, F1 (at a decision threshold fitted on the
validation split and then applied unchanged to test), ROC AUC and PR AUC (threshold-free),
each with a seeded 95% percentile-bootstrap interval, and the expected calibration error.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cxr.config import parse_threshold_rule
from cxr.model.decisions import decide, screened_classes

AT_THRESHOLD = ("sensitivity", "specificity", "ppv", "npv", "f1")
RANKING = ("roc_auc", "pr_auc")


class ThresholdRule:
    """`evaluate.threshold`: a fixed probability (e.g. 0.5), `youden` (max sensitivity +
    specificity - 1 on validation) or `sensitivity:0.95` (the highest threshold whose
    validation sensitivity reaches 0.95). The spellings are parsed by cxr.config."""

    def __init__(self, rule: float | str):
        self.rule = rule
        self.kind, self.value = parse_threshold_rule(rule)

    def fit(self, truth: np.ndarray, scores: np.ndarray) -> float:
        """The threshold this rule picks on validation labels (0/1) and scores."""
        if self.kind == "fixed":
            return self.value
        truth = np.asarray(truth).astype(bool)
        if truth.all() or not truth.any():
            return 0.5  # one class only: no curve to choose from
        fpr, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=False)
        finite = np.isfinite(thresholds)  # sklearn prepends +inf (nothing predicted positive)
        fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
        if self.kind == "youden":
            return float(thresholds[np.argmax(tpr - fpr)])
        reach = np.flatnonzero(tpr >= self.value - 1e-12)  # thresholds fall as tpr rises
        return float(thresholds[reach[0]])


def at_decisions(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and F1 of 0/1 decisions (NaN where undefined)."""
    truth, pred = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    tp, fn = float((pred & truth).sum()), float((~pred & truth).sum())
    fp, tn = float((pred & ~truth).sum()), float((~pred & ~truth).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def ranking(truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision); NaN when only one class is present."""
    truth = np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {"roc_auc": float(roc_auc_score(truth, scores)), "pr_auc": float(average_precision_score(truth, scores))}


def bootstrap(
    truth: np.ndarray, scores: np.ndarray, pred: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile-bootstrap intervals of every metric: images resampled with replacement,
    decisions kept as made. A metric undefined in a resample (no positives) skips it."""
    truth, scores, pred = np.asarray(truth).astype(bool), np.asarray(scores), np.asarray(pred).astype(bool)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in AT_THRESHOLD + RANKING}
    for _ in range(resamples):
        idx = rng.integers(0, len(truth), len(truth))
        values = {**at_decisions(truth[idx], pred[idx]), **ranking(truth[idx], scores[idx])}
        for key, value in values.items():
            draws[key].append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for key, values in draws.items():
        values = np.asarray(values)
        values = values[np.isfinite(values)]
        out[key] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if len(values) else []
    return out


def reliability(truth: np.ndarray, scores: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """Expected calibration error over `bins` equal-width probability bins, and the bins
    (mean predicted probability, observed positive fraction, count) for a reliability diagram."""
    truth, scores = np.asarray(truth).astype(float), np.asarray(scores, dtype=float)
    which = np.minimum((scores * bins).astype(int), bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        predicted, observed = float(scores[inside].mean()), float(truth[inside].mean())
        ece += inside.mean() * abs(predicted - observed)
        table.append({"bin": b, "predicted": predicted, "observed": observed, "count": int(inside.sum())})
    return float(ece), table


def screening_report(
    truth: np.ndarray,
    scores: np.ndarray,
    pred: np.ndarray,
    resamples: int,
    seed: int,
    bins: int,
) -> dict:
    """Every metric above for one positive class on test: point values, 95% bootstrap bounds
    (`<metric>_ci95_low` / `_high`, flat so `dvc metrics diff` shows them) and the ECE."""
    point = {**at_decisions(truth, pred), **ranking(truth, scores)}
    report: dict = {}
    intervals = bootstrap(truth, scores, pred, resamples, seed) if resamples else {}
    for key, value in point.items():
        report[key] = _finite(value)
        if intervals.get(key):
            report[f"{key}_ci95_low"], report[f"{key}_ci95_high"] = intervals[key]
    report["ece"] = reliability(truth, scores, bins)[0]
    report["positives"] = int(np.asarray(truth).astype(bool).sum())
    report["n"] = len(truth)
    return report


def operating_points(
    classes: tuple[str, ...],
    multilabel: bool,
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    rule: ThresholdRule,
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Test decisions (cxr.model.decisions.decide) and the threshold of each screened class,
    fitted on validation alone; a multi-class argmax has no threshold (None per class)."""
    if not (multilabel or len(classes) == 2):
        return decide(test_probs, classes, multilabel), dict.fromkeys(classes)
    truth = val_labels > 0 if multilabel else None
    thresholds = {}
    for i in screened_classes(classes, multilabel):
        is_class = truth[:, i] if multilabel else val_labels == i
        thresholds[classes[i]] = rule.fit(is_class, val_probs[:, i])
    return decide(test_probs, classes, multilabel, thresholds), thresholds


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None  # JSON has no NaN
