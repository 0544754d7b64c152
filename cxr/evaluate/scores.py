"""Test-set scores for single-label and multi-label classification, computed with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_scores(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], preds: np.ndarray | None = None
) -> dict:
    """Accuracy, macro and per-class precision/recall/F1/ROC AUC, and the confusion matrix.

    `labels` holds class indices (N,), `probs` probabilities (N, C), `preds` the decisions
    (default: argmax). The confusion matrix has one row per true class and one column per
    predicted class, in `classes` order.
    """
    preds = probs.argmax(1) if preds is None else preds
    index = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=index, zero_division=0)
    per_class = {}
    for i, cls in enumerate(classes):
        per_class[cls] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "roc_auc": _auc(labels == i, probs[:, i]),
            "support": int(support[i]),
        }
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": per_class,
        "confusion_matrix": {
            "classes": list(classes),
            "rows_true_cols_pred": confusion_matrix(labels, preds, labels=index).tolist(),
        },
    }


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC, or None where a class is all-positive or all-negative (AUC undefined)."""
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None


def _known_only(targets: np.ndarray, preds: np.ndarray, known: np.ndarray) -> tuple:
    """multilabel_scores' figures with each finding counted on its known rows only: per class precision,
    recall, F1, support and 2x2 matrix; the subset accuracy (a row exact on its known findings); micro F1."""
    matrices = np.stack([confusion_matrix(targets[k, i], preds[k, i], labels=[0, 1]) for i, k in enumerate(known.T)])
    tn, fp, fn, tp = (matrices.reshape(-1, 4).T).astype(float)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    subset = float(((targets == preds) | ~known).all(1).mean())
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return precision, recall, f1, (tp + fn).astype(int), matrices, subset, micro


def multilabel_scores(
    targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float | Sequence[float] = 0.5
) -> dict:
    """Subset accuracy, macro/micro F1, and per class precision/recall/F1/ROC AUC and a 2x2
    confusion matrix ([[tn, fp], [fn, tp]]). `targets` and `probs` are (N, C); `threshold`
    is one for all classes or one per class; NaN targets (uncertain findings) are left out of their class."""
    preds = (probs >= np.asarray(threshold)).astype(int)
    known = ~np.isnan(targets)  # an uncertain finding (data.uncertain: ignore) is scored nowhere
    targets = np.where(known, targets, 0).astype(int)
    if known.all():
        precision, recall, f1, support = precision_recall_fscore_support(targets, preds, zero_division=0)
        matrices = multilabel_confusion_matrix(targets, preds)
        subset, micro = accuracy_score(targets, preds), f1_score(targets, preds, average="micro", zero_division=0)
    else:
        precision, recall, f1, support, matrices, subset, micro = _known_only(targets, preds, known)
    per_class = {
        cls: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "roc_auc": _auc(targets[known[:, i], i], probs[known[:, i], i]),
            "support": int(support[i]),
            "confusion_matrix_tn_fp_fn_tp": matrices[i].ravel().tolist(),
        }
        for i, cls in enumerate(classes)
    }
    aucs = [r["roc_auc"] for r in per_class.values() if r["roc_auc"] is not None and np.isfinite(r["roc_auc"])]
    return {
        "n": int(len(targets)),
        "threshold": threshold if np.isscalar(threshold) else list(threshold),
        "mean_auroc": float(np.mean(aucs)) if aucs else None,  # what CheXNet and its successors report
        "subset_accuracy": float(subset),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(micro),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "per_class": per_class,
    }
