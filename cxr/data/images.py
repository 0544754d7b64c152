"""Reading image files: what counts as an image, decoding to 8-bit RGB, and pixel digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def pixel_digest(img: Image.Image) -> str:
    """Hash of decoded pixels: the same image saved twice, or re-encoded losslessly, matches."""
    return hashlib.sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()


def open_gray(path: Path) -> Image.Image:
    """Decode an image file into 8-bit grayscale (colour by ITU-R 601 luma), honouring EXIF orientation."""
    return open_rgb(path).convert("L")


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file into 8-bit RGB, honouring EXIF orientation."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
            img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
        return img.convert("RGB")
