"""Reading image files: what counts as an image, decoding to 8-bit RGB, and pixel digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxr.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# verify.max_pixels' default, for code run without params (stages.predict): a 16-bit PNG of a few
# hundred KB can hold hundreds of millions of pixels, and decoding it takes gigabytes
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLarge(PipelineError, ValueError):
    """An image over the pixel limit: refused by name before decoding."""


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def pixel_digest(img: Image.Image) -> str:
    """Hash of decoded pixels: the same image saved twice, or re-encoded losslessly, matches."""
    return hashlib.sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()


def open_gray(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into 8-bit grayscale (colour by ITU-R 601 luma), honouring EXIF orientation."""
    return open_rgb(path, max_pixels).convert("L")


def pixel_problem(img: Image.Image, max_pixels: int) -> str:
    """Why an opened image is over `max_pixels` (read from its header, nothing decoded); empty if it is not."""
    if img.width * img.height <= max_pixels:
        return ""
    return (
        f"{img.width}x{img.height} = {img.width * img.height:,} pixels, over the limit of {max_pixels:,} "
        "(verify.max_pixels); downscale it or raise the limit"
    )


def check_pixels(img: Image.Image, path: Path, max_pixels: int) -> None:
    """Refuse an image larger than `max_pixels`, from its header, before anything is decoded."""
    why = pixel_problem(img, max_pixels)
    if why:
        raise ImageTooLarge(f"{path}: {why}")


def open_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into 8-bit RGB, honouring EXIF orientation; refuses images over `max_pixels`."""
    with Image.open(path) as img:
        check_pixels(img, Path(path), max_pixels)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
            img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
        return img.convert("RGB")
