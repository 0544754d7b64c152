"""Radiograph-aware input (`train.input`): how a decoded film becomes the square row a model sees.

Films from other hospitals differ in what surrounds the lungs (letterbox bars, burnt-in frames),
in how their grey levels are spread (detector, exposure, export window) and in their shape.
Each step is part of a model's recipe: decode, external and predict apply the same one, and its
name (`InputRecipe.name`) is the `preprocessing` recorded in the store index and the checkpoint,
from which prediction rebuilds it. The steps, in order, on 8-bit grayscale:

- border `crop`: strip uniform rows and columns from each edge (at most half of each side);
- intensity `window` (0.5th..99.5th percentile stretched to 0..255), `equalize` (global histogram
  equalisation) or `clahe` (contrast-limited adaptive histogram equalisation, clip 2, 8 x 8 tiles);
- aspect `squash` (resize to a square, the default), `pad` (to a square with black, then resize)
  or `crop` (the centred square, then resize);
- a bilinear resize to the model's side (PIL's, as the default store always used).

OpenCV does the two equalisations: its CLAHE is the reference implementation most chest X-ray
papers use, works on uint8 in integer arithmetic (the same bytes on every machine, which a decode
stage tracked by DVC needs), and takes milliseconds for a 1,024 px film; scikit-image's works in
floating point on a 0..1 copy, and kornia's is a differentiable approximation meant for tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from cxr.config import ASPECTS, BORDERS, INTENSITIES, InputConfig
from cxr.errors import PipelineError

BASE = "gray8-square-bilinear"  # the default recipe's name, and every name's first part
UNIFORM_TOLERANCE = 0.02  # a row or column is uniform when its spread is under this share of 0..255
WINDOW_PERCENTILES = (0.5, 99.5)
CLAHE_CLIP, CLAHE_TILES = 2.0, 8


class RecipeError(PipelineError, ValueError):
    """A preprocessing name this version cannot rebuild."""


def uniform_edges(gray: np.ndarray, tolerance: float = UNIFORM_TOLERANCE) -> tuple[int, int, int, int]:
    """Uniform rows at the top and bottom and columns at the left and right of a 2-D image whose
    values span 0..1 (letterbox bars, burnt-in frames): (top, bottom, left, right) counts."""

    def run(lines: np.ndarray) -> int:
        uniform = lines.std(1) < tolerance
        return int(np.argmin(uniform)) if not uniform.all() else len(lines)

    return run(gray), run(gray[::-1]), run(gray.T), run(gray.T[::-1])


def crop_border(gray: np.ndarray) -> np.ndarray:
    """The film without its uniform edges, keeping at least half of each side (centred on what is left)."""
    top, bottom, left, right = uniform_edges(gray.astype(np.float32) / 255.0)
    h, w = gray.shape
    top, bottom = _capped(top, bottom, h)
    left, right = _capped(left, right, w)
    return gray[top : h - bottom, left : w - right]


def _capped(first: int, last: int, side: int) -> tuple[int, int]:
    """Edge counts that leave at least half of `side`, cut in proportion when they would not."""
    most = side // 2
    if first + last <= most:
        return first, last
    first = first * most // max(first + last, 1)
    return first, min(last, most - first)


def window(gray: np.ndarray) -> np.ndarray:
    """The 0.5th..99.5th percentile range stretched to 0..255 (a display window from the film itself)."""
    lo, hi = np.percentile(gray, WINDOW_PERCENTILES)
    if hi <= lo:
        return gray
    out = (gray.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def equalize(gray: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.equalizeHist(np.ascontiguousarray(gray))


def clahe(gray: np.ndarray) -> np.ndarray:
    import cv2

    tiles = (CLAHE_TILES, CLAHE_TILES)
    return cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=tiles).apply(np.ascontiguousarray(gray))


def square(gray: np.ndarray, aspect: str) -> np.ndarray:
    """A square film from a rectangular one: unchanged (squash, the resize stretches it), padded
    with black or the centred square."""
    h, w = gray.shape
    if aspect == "squash" or h == w:
        return gray
    side = max(h, w) if aspect == "pad" else min(h, w)
    if aspect == "pad":
        out = np.zeros((side, side), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        out[top : top + h, left : left + w] = gray
        return out
    top, left = (h - side) // 2, (w - side) // 2
    return gray[top : top + side, left : left + side]


INTENSITY = {"window": window, "equalize": equalize, "clahe": clahe}


@dataclass(frozen=True)
class InputRecipe:
    """The radiograph-aware steps of one model's input; the default changes nothing."""

    border: str = "keep"
    intensity: str = "none"
    aspect: str = "squash"

    def __post_init__(self):
        for key, allowed in (("border", BORDERS), ("intensity", INTENSITIES), ("aspect", ASPECTS)):
            if getattr(self, key) not in allowed:
                raise RecipeError(f"{key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")

    @property
    def name(self) -> str:
        """`gray8-square-bilinear`, then `;key=value` for each step that is not the default."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != f.default]
        return ";".join([BASE, *changed])

    @classmethod
    def from_params(cls, cfg: InputConfig) -> InputRecipe:
        return cls(border=cfg.border, intensity=cfg.intensity, aspect=cfg.aspect)

    @classmethod
    def from_name(cls, name: str) -> InputRecipe:
        """The recipe a `preprocessing` name records; RecipeError for one this version cannot rebuild."""
        base, *steps = name.split(";")
        if base != BASE:
            raise RecipeError(f"preprocessing {name!r} is not this version's {BASE!r} family")
        known = {f.name for f in fields(cls)}
        pairs = dict(step.split("=", 1) for step in steps if "=" in step)
        if len(pairs) != len(steps) or set(pairs) - known:
            raise RecipeError(f"preprocessing {name!r} has steps this version does not know ({', '.join(known)})")
        return cls(**pairs)

    def row(self, img: Image.Image, size: int) -> np.ndarray:
        """An 8-bit grayscale PIL image as the model's uint8 (size, size) input."""
        if self == DEFAULT:  # byte for byte what every store before train.input held
            return np.asarray(img.resize((size, size), Image.BILINEAR))
        gray = np.asarray(img)
        if self.border == "crop":
            gray = crop_border(gray)
        if self.intensity != "none":
            gray = INTENSITY[self.intensity](gray)
        gray = square(gray, self.aspect)
        return np.asarray(Image.fromarray(np.ascontiguousarray(gray), mode="L").resize((size, size), Image.BILINEAR))


DEFAULT = InputRecipe()
