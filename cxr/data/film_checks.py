"""Model-free checks that a file is a radiograph at all, read from the original file before the
decoder makes it a gray square: a colour photo, a blank or near-constant frame, an extreme aspect
ratio, a screenshot or document (flat background, sharp strokes).

The limits sit far outside what real films show. Measured over 191 radiographs of
../shared/real-xray-train and real-xray-sample (four hospitals, PNG and JPEG): colour 0 in every
film, gray spread 14.7 to 66.8 levels, aspect 1.0 to 1.75, identical-neighbour share 0.06 to 0.32,
sharp-step share at most 0.011.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, open_image

SIDE = 256  # the checks read a thumbnail this size: quick on any film
MAX_COLOUR = 12.0  # mean (max - min over R, G, B) in 0..255: a gray film is 0, a photo tens
MIN_SPREAD = 4.0  # standard deviation of the gray levels: a blank frame is ~0
MAX_ASPECT = 2.2  # longer side / shorter side
MAX_FLAT = 0.6  # share of horizontally neighbouring pixels that are identical ...
MIN_STEPS = 0.015  # ... together with this share of steps over 64 levels: text on a flat background
STEP = 64


def film_problem(img: Image.Image) -> str:
    """Why this image is not a radiograph the model can read, or '' when it passes every check."""
    w, h = img.size
    if min(w, h) == 0:
        return "not a radiograph: an empty image"
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return f"not a radiograph: aspect ratio {w} x {h} (over {MAX_ASPECT}:1)"
    small = img.copy()
    small.thumbnail((SIDE, SIDE))
    if small.mode not in ("L", "I", "I;16", "F", "1"):
        rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
        colour = float((rgb.max(2) - rgb.min(2)).mean())
        if colour > MAX_COLOUR:
            return f"not a radiograph: a colour image (colour {colour:.0f} over {MAX_COLOUR:.0f})"
    gray = np.asarray(small.convert("L"), dtype=np.int16)
    spread = float(gray.std())
    if spread < MIN_SPREAD:
        return f"not a radiograph: a blank or near-constant frame (gray spread {spread:.1f} under {MIN_SPREAD:.0f})"
    steps = np.abs(np.diff(gray, axis=1))
    flat, sharp = float((steps == 0).mean()), float((steps > STEP).mean())
    if flat > MAX_FLAT and sharp > MIN_STEPS:
        return f"not a radiograph: a screenshot or document ({flat:.0%} flat, {sharp:.1%} sharp steps)"
    return ""


def check_files(files: Iterable[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """film_problem of each file ('' when it passes); an unreadable file says why."""
    out = []
    for path in files:
        try:
            with open_image(Path(path), max_pixels) as img:
                out.append(film_problem(img))
        except ImageTooLarge as exc:
            out.append(f"not read: {exc}")
        except (OSError, ValueError) as exc:
            out.append(f"not read: {type(exc).__name__}: {exc}")
    return out
