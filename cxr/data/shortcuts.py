"""The shortcut audit: can the labels be predicted from what should not carry them?

Public COVID collections draw each class from other hospitals, ages and scanners, and models
learn those instead of the lungs (DeGrave et al. 2021). For every image, `appearance` measures
what a network could read without looking at the lungs: original width, height and aspect, bit
depth and channels, file format, mean and spread of intensity, and the share of the image in
uniform borders (letterboxing). `audit` reports each property per class, cross-validates a small
classifier on these properties alone (grouped by patient where known, like the splits), and names
the single most telling property. A balanced accuracy far above chance says the labels can be
predicted without looking at the lungs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from cxr.data.radiograph import uniform_edges

PROPERTIES = ("width", "height", "aspect", "bit_depth", "channels", "format", "mean", "spread", "border")
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I;16": 16, "I": 32, "F": 32}
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
THUMB = 64  # side of the grayscale thumbnail the intensity properties are measured on


def _gray(img: Image.Image) -> np.ndarray:
    """A THUMB x THUMB grayscale thumbnail in [0, 1], 16-bit images scaled by their own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8), mode="L")
    return np.asarray(img.convert("L").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32) / 255.0


def border_fraction(gray: np.ndarray) -> float:
    """Share of a square image (values 0..1) in uniform rows and columns at its edges (letterbox bars,
    burnt-in frames: what `train.input.border: crop` strips)."""
    top, bottom, left, right = uniform_edges(gray)
    rows, cols = top + bottom, left + right
    side = gray.shape[0]
    kept = max(side - rows, 0) * max(side - cols, 0)
    return 1.0 - kept / (side * side)


def appearance(img: Image.Image) -> dict[str, float]:
    """The properties of one opened image, as numbers (format as an index into FORMATS)."""
    gray = _gray(img)
    return {
        "width": float(img.width),
        "height": float(img.height),
        "aspect": img.width / max(img.height, 1),
        "bit_depth": float(BIT_DEPTH.get(img.mode, 8)),
        "channels": float(len(img.getbands())),
        "format": float(FORMATS.index(img.format) if img.format in FORMATS else len(FORMATS)),
        "mean": float(gray.mean()),
        "spread": float(gray.std()),
        "border": border_fraction(gray),
    }


def _cv_balanced_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, model) -> float:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    folds = min(5, int(np.bincount(y).min()), len(set(groups)))
    if folds < 2:
        return float("nan")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(balanced_accuracy_score(y, cross_val_predict(model, x, y, groups=groups, cv=cv)))


def audit(rows: list[dict], seed: int = 0) -> dict:
    """The audit of `rows` (one per image: `label`, `group`, optional `source`, and PROPERTIES).

    Returns `balanced_accuracy` of a random forest on all properties (5-fold, grouped), `chance`
    (1 / classes), `most_telling` (the property whose one-feature tree scores best) with
    `per_property` scores, per-class medians of each property, and per-class source counts.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    labels = sorted({r["label"] for r in rows})
    if len(labels) < 2:
        return {}
    y = np.asarray([labels.index(r["label"]) for r in rows])
    groups = np.asarray([r["group"] for r in rows])
    x = np.asarray([[r[p] for p in PROPERTIES] for r in rows], dtype=np.float64)
    forest = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=seed, n_jobs=1)
    overall = _cv_balanced_accuracy(x, y, groups, seed, forest)
    per_property = {
        p: round(_cv_balanced_accuracy(x[:, [i]], y, groups, seed, DecisionTreeClassifier(max_depth=3)), 4)
        for i, p in enumerate(PROPERTIES)
    }
    most = max(per_property, key=lambda p: (np.nan_to_num(per_property[p]), p))
    medians = {
        c: {p: round(float(np.median(x[y == i, j])), 4) for j, p in enumerate(PROPERTIES)} for i, c in enumerate(labels)
    }
    sources = {c: dict(Counter(r.get("source") or "unknown" for r in rows if r["label"] == c)) for c in labels}
    return {
        "balanced_accuracy": round(overall, 4),
        "chance": round(1 / len(labels), 4),
        "most_telling": most,
        "per_property": per_property,
        "medians": medians,
        "sources": sources,
    }
