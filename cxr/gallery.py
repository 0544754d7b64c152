"""An image grid of confident correct and wrong test predictions, as published reports show."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.images import open_rgb

TILE = 160
CAPTION = 48
GREEN, RED = (40, 170, 60), (210, 40, 40)


def _decide(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions, right or wrong per image, confidence per image) for either label layout.

    Multi-label: an image is right when every class decision (p >= 0.5) is, and as confident
    as its least certain class decision.
    """
    if labels.ndim == 2:
        preds = (probs >= 0.5).astype(labels.dtype)
        return preds, (preds == labels).all(1), np.maximum(probs, 1 - probs).min(1)
    preds = probs.argmax(1)
    return preds, preds == labels, probs.max(1)


def pick_examples(labels: np.ndarray, probs: np.ndarray, per_kind: int) -> tuple[list[int], list[int]]:
    """Indices of the most confident correct and the most confident wrong predictions."""
    _, right, confidence = _decide(labels, probs)
    order = np.argsort(-confidence, kind="stable")
    correct = [int(i) for i in order if right[i]][:per_kind]
    wrong = [int(i) for i in order if not right[i]][:per_kind]
    return correct, wrong


def _caption(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, classes: Sequence[str], i: int) -> str:
    if labels.ndim == 2:

        def names(row):
            return "+".join(c for c, on in zip(classes, row, strict=True) if on) or "none"

        scores = "p=" + "/".join(f"{p:.2f}" for p in probs[i])  # in class order, as the legend says
        return f"true {names(labels[i])}\npred {names(preds[i])}\n{scores}"
    pred = int(preds[i])
    return f"true {classes[labels[i]]}\npred {classes[pred]} p={probs[i, pred]:.2f}"


def _tile(path: Path, caption: str, colour: tuple[int, int, int], font) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    tile.paste(open_rgb(path).resize((TILE - 6, TILE - 6), Image.BILINEAR), (3, 3))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=colour, width=3)
    draw.multiline_text((4, TILE + 2), caption, fill=colour, font=font, spacing=2)
    return tile


def prediction_grid(
    files: Sequence[Path], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], per_kind: int
) -> Image.Image:
    """Two rows: confident correct predictions (green) and confident wrong ones (red)."""
    correct, wrong = pick_examples(labels, probs, per_kind)
    preds, _, _ = _decide(labels, probs)
    font = ImageFont.load_default(size=12)
    columns = max(len(correct), len(wrong), 1)
    grid = Image.new("RGB", (columns * TILE, 2 * (TILE + CAPTION) + 40), "white")
    draw = ImageDraw.Draw(grid)
    for row, (title, indices, colour) in enumerate(
        (("correct (most confident)", correct, GREEN), ("wrong (most confident)", wrong, RED))
    ):
        y = row * (TILE + CAPTION + 20)
        legend = f"; p = {'/'.join(classes)}" if labels.ndim == 2 else ""
        shown = f"{title}: {len(indices)} shown{legend}" if indices else f"{title}: none"
        draw.text((4, y + 3), shown, fill=colour, font=font)
        for col, i in enumerate(indices):
            grid.paste(_tile(files[i], _caption(labels, probs, preds, classes, i), colour, font), (col * TILE, y + 20))
    return grid
