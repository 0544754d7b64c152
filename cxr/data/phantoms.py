"""Procedural chest-radiograph phantoms: synthetic demo data, not medical data.

Each image is drawn in a body coordinate frame (x right, y down, both in [-1, 1]) that a
random pose (rotation, scale, shift) maps onto the pixel grid, so anatomy and lesions move
together. Infected (covid) images add soft, bilateral, peripheral, lower-zone ground-glass
opacities; pneumonia adds one dense lobar consolidation. `difficulty` in [0, 1] fades the
lesions and raises the film noise.

Everything is computed in float64 and only the final image is rounded to uint8: numpy's SIMD exp,
cos and pow differ between CPUs (SSE, AVX2, AVX-512) by a few units in the last place, which in
float32 flips pixels and so the demo's bytes and data/raw's hash in dvc.lock; in float64 a pixel
would flip only if its value fell within ~1e-15 of a rounding boundary (tests/test_demo_data.py
nudges every such result by 4 ULP and compares the bytes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

LESION_CLASSES = ("infected", "covid")  # classes drawn with ground-glass opacities
CONSOLIDATION_CLASSES = ("pneumonia",)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random texture in [0, 1]: coarse noise upsampled bicubically."""
    coarse = rng.random((cells, cells)).astype(np.float32)  # PIL's float mode; its resize is plain C
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    field = np.asarray(img, dtype=np.float64)
    return np.clip(field, 0.0, 1.0)


def _ellipse(x, y, cx, cy, ax, ay, edge):
    """Soft-edged ellipse mask in [0, 1]; `edge` is the blur width in body units."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return np.clip((1.0 - r) / edge, 0.0, 1.0)


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _body_grid(rng: np.random.Generator, size: int):
    """Pixel grid mapped into the body frame through a random pose."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    u = u / (size - 1) * 2 - 1
    v = v / (size - 1) * 2 - 1
    angle = np.deg2rad(rng.uniform(-7, 7))
    scale = rng.uniform(0.85, 1.05)
    tx, ty = rng.uniform(-0.06, 0.06, size=2)
    c, s = np.cos(angle), np.sin(angle)
    x = (c * (u - tx) + s * (v - ty)) / scale
    y = (-s * (u - tx) + c * (v - ty)) / scale
    return x, y


def _anatomy(rng: np.random.Generator, x, y):
    """Thorax, lungs, heart, spine, ribs and clavicles; returns (intensity, lung mask)."""
    thorax = _ellipse(x, y, 0.0, 0.12, rng.uniform(0.78, 0.86), rng.uniform(0.95, 1.05), 0.08)
    neck = np.clip((0.2 - np.abs(x)) / 0.05, 0, 1) * (y < -0.6)
    img = 0.06 + 0.40 * np.maximum(thorax, neck)

    lung_w = rng.uniform(0.28, 0.33)
    lung_h = rng.uniform(0.52, 0.60)
    right = _ellipse(x, y, -0.37, -0.02, lung_w, lung_h, 0.25)
    left = _ellipse(x, y, 0.37, 0.0, lung_w * 0.93, lung_h * 0.95, 0.25)
    lungs = np.maximum(right, left)
    img = img - 0.27 * lungs

    heart = _ellipse(x, y, rng.uniform(0.10, 0.18), 0.30, rng.uniform(0.28, 0.34), 0.26, 0.6)
    img = img + 0.16 * heart

    spine_band = np.clip((0.075 - np.abs(x)) / 0.02, 0, 1) * thorax
    vertebrae = 0.8 + 0.2 * np.cos(y * rng.uniform(34, 40)) ** 2
    img = img + 0.16 * spine_band * vertebrae

    ribs = np.zeros_like(x)
    start = rng.uniform(-0.58, -0.50)
    for k in range(9):
        y0 = start + k * 0.115
        curve = y0 + 0.28 * np.power(np.abs(x), 1.6)
        band = np.clip(1.0 - np.abs(y - curve) / 0.022, 0, 1)
        ribs = np.maximum(ribs, band * (np.abs(x) > 0.07) * (np.abs(x) < 0.68))
    img = img + 0.10 * ribs * thorax

    clav_curve = -0.66 + 0.12 * np.abs(x)
    clavicles = np.clip(1.0 - np.abs(y - clav_curve) / 0.03, 0, 1) * (np.abs(x) > 0.06) * (np.abs(x) < 0.55)
    img = img + 0.15 * clavicles
    return img, lungs


def _ground_glass(rng, x, y, lungs, size, strength):
    """Soft, textured, bilateral opacities in the peripheral lower zones."""
    texture = 0.55 + 0.45 * _smooth_field(rng, size, 12)
    opacity = np.zeros_like(x)
    for side in (-1.0, 1.0):  # bilateral: at least one patch per lung
        for _ in range(int(rng.integers(1, 3))):
            cx = side * rng.uniform(0.42, 0.56)
            cy = rng.uniform(0.05, 0.38)
            opacity += rng.uniform(0.7, 1.0) * _gauss(x, y, cx, cy, rng.uniform(0.08, 0.13), rng.uniform(0.10, 0.16))
    return strength * 0.22 * np.clip(opacity, 0, 1) * texture * lungs


def _consolidation(rng, x, y, lungs, strength):
    """One dense lobar consolidation bounded by a fissure in a single lung."""
    side = rng.choice([-1.0, 1.0])
    fissure = rng.uniform(-0.08, 0.12) + 0.25 * side * x
    lower = rng.random() < 0.6
    lobe = np.clip(((y - fissure) if lower else (fissure - y)) / 0.04, 0, 1)
    one_lung = np.clip(side * x / 0.05, 0, 1)
    patch = _ellipse(x, y, side * 0.38, 0.25 if lower else -0.25, 0.28, 0.33, 0.5)
    return strength * 0.34 * lobe * one_lung * patch * lungs


def render_phantom(labels: str | tuple[str, ...], size: int, difficulty: float, rng: np.random.Generator) -> np.ndarray:
    """Render one grayscale phantom with the findings of `labels` (one class name or several)
    as a uint8 array of shape (size, size)."""
    labels = (labels,) if isinstance(labels, str) else labels
    x, y = _body_grid(rng, size)
    img, lungs = _anatomy(rng, x, y)
    strength = 1.0 - 0.75 * difficulty
    if any(cls in LESION_CLASSES for cls in labels):
        img = img + _ground_glass(rng, x, y, lungs, size, strength)
    if any(cls in CONSOLIDATION_CLASSES for cls in labels):
        img = img + _consolidation(rng, x, y, lungs, strength)

    # film response: random window and gamma, then blur and grain
    img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
    img = np.power(img, rng.uniform(0.8, 1.25))
    pil = Image.fromarray((img * 255).astype(np.uint8), mode="L")
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2) * size / 128))
    arr = np.asarray(pil, dtype=np.float64) / 255
    arr = arr + rng.normal(0, 0.015 + 0.035 * difficulty, arr.shape)
    return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
