"""What `dvc metrics show`, `dvc metrics diff` and `dvc exp show` compare: a handful of numbers per stage
in metrics/summary/<stage>.json, the files dvc.yaml declares as `metrics:`. Each stage's full detail
(per-class counts, hashes, per-fold lists, data inventories) stays in its own JSON file, a plain out.

Keys are flat or nested under a class or set name, never spelled like a params.yaml key, and unique
across the files, so `dvc exp show` names each column by its key alone."""

from __future__ import annotations

SUMMARY_CLASS_KEYS = {"sensitivity": "sensitivity", "specificity": "specificity", "roc_auc": "auc"}


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def data_summary(detail: dict) -> dict:
    """verify: images verified, leaks across splits (identical or near-identical images, shared
    patients) and how well image properties alone predict the label (the shortcut audit)."""
    shortcut = detail.get("shortcut") or {}
    return {
        "images": detail["total"],
        "leaks_across_splits": detail["duplicate_groups"]["across_splits"]
        + detail["near_duplicate_pairs"]["across_splits"]
        + detail["patients_across_splits"],
        "shortcut_accuracy": _rounded(shortcut.get("balanced_accuracy")),
    }


def train_summary(best: dict) -> dict:
    """train: the epoch kept as models/model.pt, its validation scores, and the CPU threads it ran on
    (a CPU run's numbers depend on them; metrics/train/metrics.json has torch, CPU and device too)."""
    return {
        "best_epoch": best["epoch"],
        "val_f1": _rounded(best["val_f1"]),
        "val_accuracy": _rounded(best["val_accuracy"]),
        **({"threads": best["environment"]["threads"]} if "environment" in best else {}),
    }


def class_summary(report: dict) -> dict:
    """Sensitivity, specificity and ROC AUC of one screened class, each with its 95 % interval."""
    out = {}
    for key, name in SUMMARY_CLASS_KEYS.items():
        out[name] = _rounded(report.get(key))
        out[f"{name}_lo"] = _rounded(report.get(f"{key}_ci95_low"))
        out[f"{name}_hi"] = _rounded(report.get(f"{key}_ci95_high"))
    return out


def accuracy_key(scores: dict) -> str:
    """The accuracy a scored set is judged by: subset accuracy for multi-label rows, else accuracy."""
    return "subset_accuracy" if "subset_accuracy" in scores else "accuracy"


def headline(scores: dict) -> dict:
    """Accuracy (subset accuracy for multi-label) and macro F1 of one scored set, and for multi-label the
    mean of the per-finding ROC AUCs (the figure papers on NIH ChestX-ray14 report)."""
    key = accuracy_key(scores)
    out = {key: _rounded(scores[key]), "f1_macro": _rounded(scores["f1_macro"])}
    if scores.get("mean_auroc") is not None:
        out["mean_auroc"] = _rounded(scores["mean_auroc"])
    return out


def headline_text(scores: dict, digits: int = 4) -> str:
    """The headline as a log or card line: `accuracy 0.9950, macro F1 0.9950` (multi-label: and the mean
    per-finding ROC AUC)."""
    key = accuracy_key(scores)
    text = f"{key.replace('_', ' ')} {scores[key]:.{digits}f}, macro F1 {scores['f1_macro']:.{digits}f}"
    if scores.get("mean_auroc") is not None:
        text += f", mean ROC AUC over the {len(scores.get('per_class', {}))} findings {scores['mean_auroc']:.{digits}f}"
    return text


def test_summary(scores: dict) -> dict:
    """evaluate: the headline, and per class the screening figures with intervals."""
    out = headline(scores)
    out.update({cls: class_summary(report) for cls, report in scores["screening"].items()})
    return out


def export_summary(detail: dict) -> dict:
    """export: how far each exported file's logits are from the checkpoint's."""
    return {k: detail[k] for k in ("onnx_max_abs_diff", "pt2_max_abs_diff")}


def external_summary(results: dict) -> dict:
    """external: accuracy and macro F1 per external set."""
    return {name: headline(scores) for name, scores in results.items()}


def cv_summary(result: dict) -> dict:
    """crossval: the number of folds, the mean and spread of accuracy and macro F1 over them, and both
    over every fold's test films pooled (under leave-one-source-out, the films of unseen sources)."""
    out: dict = {"folds": result["k"]}
    if result["k"]:
        for key in ("accuracy", "f1_macro"):
            out[f"cv_{key}"] = _rounded(result[f"{key}_mean"])
            out[f"cv_{key}_std"] = _rounded(result[f"{key}_std"])
            out[f"cv_pooled_{key}"] = _rounded(result.get("pooled", {}).get(key))  # every fold's films together
    return out
