"""Test-set scores for single-label classification, computed with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score


def classification_scores(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro and per-class precision/recall/F1/ROC AUC, and the confusion matrix.

    `labels` holds class indices (N,), `probs` softmax probabilities (N, C). The confusion
    matrix has one row per true class and one column per predicted class, in `classes` order.
    """
    preds = probs.argmax(1)
    index = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=index, zero_division=0)
    per_class = {}
    for i, cls in enumerate(classes):
        one_vs_rest = labels == i
        auc = float(roc_auc_score(one_vs_rest, probs[:, i])) if 0 < one_vs_rest.sum() < len(labels) else None
        per_class[cls] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "roc_auc": auc,
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
