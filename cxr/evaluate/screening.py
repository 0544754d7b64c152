"""Screening metrics for one positive class: threshold chosen on validation, 95% intervals, calibration.

Accuracy on a test set says little about a screening model. For each positive class this
module reports sensitivity, specificity, PPV, NPV, F1 (at a decision threshold fitted on the
validation split and then applied unchanged to test), ROC AUC and PR AUC (threshold-free),
and the expected calibration error. Intervals: the four proportions get the exact
(Clopper-Pearson) binomial interval, which stays honest at 100/100 ([0.964, 1] rather than a
bootstrap's [1, 1]); F1 and the AUCs, which are not proportions, a seeded percentile bootstrap,
vectorised over resamples (images redrawn as multinomial weights).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cxr.config import parse_threshold_rule
from cxr.model.decisions import decide, screened_classes


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


def _counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    truth, pred = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    return {
        "tp": float((pred & truth).sum()),
        "fn": float((~pred & truth).sum()),
        "fp": float((pred & ~truth).sum()),
        "tn": float((~pred & ~truth).sum()),
    }


# each proportion as (successes, the other outcome) of the confusion counts
PROPORTIONS = {"sensitivity": ("tp", "fn"), "specificity": ("tn", "fp"), "ppv": ("tp", "fp"), "npv": ("tn", "fn")}


def at_decisions(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and F1 of 0/1 decisions (NaN where undefined)."""
    c = _counts(truth, pred)

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    out = {key: ratio(c[hit], c[hit] + c[miss]) for key, (hit, miss) in PROPORTIONS.items()}
    out["f1"] = ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    return out


def exact_interval(successes: int, n: int, level: float = 0.95) -> list[float]:
    """Clopper-Pearson interval of a binomial proportion ([] when n is 0)."""
    if n == 0:
        return []
    tail = (1 - level) / 2
    low = float(beta.ppf(tail, successes, n - successes + 1)) if successes > 0 else 0.0
    high = float(beta.ppf(1 - tail, successes + 1, n - successes)) if successes < n else 1.0
    return [low, high]


def proportion_intervals(truth: np.ndarray, pred: np.ndarray, level: float = 0.95) -> dict[str, list[float]]:
    """Exact intervals of sensitivity, specificity, PPV and NPV."""
    c = _counts(truth, pred)
    return {key: exact_interval(int(c[hit]), int(c[hit] + c[miss]), level) for key, (hit, miss) in PROPORTIONS.items()}


def ranking(truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and PR AUC (average precision); NaN when only one class is present."""
    truth = np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {"roc_auc": float(roc_auc_score(truth, scores)), "pr_auc": float(average_precision_score(truth, scores))}


def weighted_ranking(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ROC AUC and average precision for each row of `weights` (resamples x images, how often each
    image was drawn), as scikit-learn computes them with `sample_weight`; NaN without both classes."""
    truth = np.asarray(truth).astype(bool)
    _, level_of = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    order = np.argsort(level_of, kind="stable")  # images by score level; each level's images side by side
    starts = np.flatnonzero(np.diff(level_of[order], prepend=-1))
    sorted_weights = weights[:, order]  # resamples x images: linear memory (an images x levels one-hot was not)
    pos = np.add.reduceat(sorted_weights * truth[order], starts, axis=1)  # weight per score level, ascending
    neg = np.add.reduceat(sorted_weights * ~truth[order], starts, axis=1)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.cumsum(neg, 1) - neg  # negatives scored lower than each level
        auc = (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
        tp, fp = np.cumsum(pos[:, ::-1], 1), np.cumsum(neg[:, ::-1], 1)  # predicted positive from the top
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (np.diff(tp, axis=1, prepend=0.0) / n_pos[:, None] * precision).sum(1)
    defined = (n_pos > 0) & (n_neg > 0)
    return {"roc_auc": np.where(defined, auc, np.nan), "pr_auc": np.where(defined, ap, np.nan)}


RESAMPLE_BLOCK = 100


def bootstrap(
    truth: np.ndarray, scores: np.ndarray, pred: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile-bootstrap intervals of F1, ROC AUC and PR AUC: images resampled with replacement
    (all resamples at once, as multinomial counts), decisions kept as made. A metric undefined in
    a resample (no positives) skips it."""
    truth, pred = np.asarray(truth).astype(bool), np.asarray(pred).astype(bool)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=resamples)
    parts = []
    for block in range(0, resamples, RESAMPLE_BLOCK):  # a block at a time: memory ~ block x images, not more
        weights = counts[block : block + RESAMPLE_BLOCK].astype(np.float64)
        tp, fp, fn = weights @ (pred & truth), weights @ (pred & ~truth), weights @ (~pred & truth)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append({"f1": 2 * tp / (2 * tp + fp + fn), **weighted_ranking(truth, scores, weights)})
    draws = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
    tail = (1 - level) / 2 * 100
    out = {}
    for key, values in draws.items():
        values = values[np.isfinite(values)]
        out[key] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if len(values) else []
    return out


def reliability(truth: np.ndarray, scores: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """Expected calibration error over `bins` equal-width probability bins, and the bins
    (mean predicted probability, observed positive fraction, count) for a reliability diagram. A score on
    an edge goes to the bin below it, exactly as scikit-learn's calibration_curve (the plot's) assigns it."""
    truth, scores = np.asarray(truth).astype(float), np.asarray(scores, dtype=float)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], scores)  # sklearn's own assignment
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
    """Every metric above for one positive class on test: point values, 95% bounds (exact for the
    proportions, bootstrap for F1 and the AUCs when `resamples` > 0; `<metric>_ci95_low` / `_high`,
    flat so `dvc metrics diff` shows them) and the ECE."""
    point = {**at_decisions(truth, pred), **ranking(truth, scores)}
    report: dict = {}
    intervals = proportion_intervals(truth, pred)
    if resamples:
        intervals.update(bootstrap(truth, scores, pred, resamples, seed))
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
    thresholds = {}
    for i in screened_classes(classes, multilabel):
        known = ~np.isnan(val_labels[:, i]) if multilabel else np.ones(len(val_labels), bool)  # uncertain: left out
        is_class = val_labels[known, i] > 0 if multilabel else val_labels == i
        thresholds[classes[i]] = rule.fit(is_class, val_probs[known, i])
    return decide(test_probs, classes, multilabel, thresholds), thresholds


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None  # JSON has no NaN
