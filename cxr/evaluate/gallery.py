"""An image grid of confident correct and wrong test predictions, as published reports show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 160
CAPTION = 48
GREEN, RED = (40, 170, 60), (210, 40, 40)


@dataclass(frozen=True)
class Outcomes:
    """Scored images: truth, probabilities and decisions, in the classes' order; `multilabel` says
    (from the model's spec) whether labels and decisions are rows of 0/1 per class."""

    labels: np.ndarray
    probs: np.ndarray
    preds: np.ndarray
    classes: Sequence[str]
    multilabel: bool

    def confidence(self) -> np.ndarray:
        """How sure each decision was: the probability of the predicted class; for multi-label
        rows, that of the least certain class decision."""
        if self.multilabel:
            return np.maximum(self.probs, 1 - self.probs).min(1)
        return self.probs[np.arange(len(self.preds)), self.preds]

    def right(self) -> np.ndarray:
        return (self.preds == self.labels).all(1) if self.multilabel else self.preds == self.labels

    def caption(self, i: int) -> str:
        if self.multilabel:

            def names(row):
                return "+".join(c for c, on in zip(self.classes, row, strict=True) if on) or "none"

            scores = "p=" + "/".join(f"{p:.2f}" for p in self.probs[i])  # in class order, as the legend says
            return f"true {names(self.labels[i])}\npred {names(self.preds[i])}\n{scores}"
        pred = int(self.preds[i])
        return f"true {self.classes[self.labels[i]]}\npred {self.classes[pred]} p={self.probs[i, pred]:.2f}"


def pick_examples(outcomes: Outcomes, per_kind: int) -> tuple[list[int], list[int]]:
    """Indices of the most confident correct and the most confident wrong decisions."""
    right = outcomes.right()
    order = np.argsort(-outcomes.confidence(), kind="stable")
    correct = [int(i) for i in order if right[i]][:per_kind]
    wrong = [int(i) for i in order if not right[i]][:per_kind]
    return correct, wrong


def _tile(image: Image.Image, caption: str, colour: tuple[int, int, int], font) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    tile.paste(image.convert("RGB").resize((TILE - 6, TILE - 6), Image.BILINEAR), (3, 3))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=colour, width=3)
    draw.multiline_text((4, TILE + 2), caption, fill=colour, font=font, spacing=2)
    return tile


def prediction_grid(
    picture: Callable[[int], Image.Image],
    outcomes: Outcomes,
    examples: tuple[list[int], list[int]],
    title: str = "",
) -> Image.Image:
    """Two rows: the `examples` (from `pick_examples`) that were right (green) and wrong (red);
    `picture(i)` draws test image i."""
    correct, wrong = examples
    font = ImageFont.load_default(size=12)
    columns = max(len(correct), len(wrong), 1)
    top = 20 if title else 0
    width = max(columns * TILE, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 8)
    grid = Image.new("RGB", (width, top + 2 * (TILE + CAPTION) + 40), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    for row, (kind, indices, colour) in enumerate(
        (("correct (most confident)", correct, GREEN), ("wrong (most confident)", wrong, RED))
    ):
        y = top + row * (TILE + CAPTION + 20)
        legend = f"; p = {'/'.join(outcomes.classes)}" if outcomes.multilabel else ""
        shown = f"{kind}: {len(indices)} shown{legend}" if indices else f"{kind}: none"
        draw.text((4, y + 3), shown, fill=colour, font=font)
        for col, i in enumerate(indices):
            tile = _tile(picture(i), outcomes.caption(i), colour, font)
            grid.paste(tile, (col * TILE, y + 20))
    return grid
