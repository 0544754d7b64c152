"""Reading image files: what counts as an image, opening one within the pixel limit (PIL formats and
DICOM), decoding to 8-bit RGB, and pixel digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxr.data.dicom import dicom_size, read_dicom
from cxr.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm")
DICOM_SUFFIX = ".dcm"
BYTES_PER_PIXEL_LIMIT = 8  # a DICOM file over max_pixels x this many bytes is refused before it is read
# verify.max_pixels' default, for code run without params (stages.predict): a 16-bit PNG of a few
# hundred KB can hold hundreds of millions of pixels, and decoding it takes gigabytes
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLarge(PipelineError, ValueError):
    """An image over the pixel limit: refused by name before decoding; `why` without the path."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.why = why


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
    return size_problem(img.width, img.height, max_pixels)


def size_problem(width: int, height: int, max_pixels: int) -> str:
    """Why a width x height image is over `max_pixels`; empty if it is not."""
    if width * height <= max_pixels:
        return ""
    return (
        f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
        "(verify.max_pixels); downscale it or raise the limit"
    )


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file, refusing one over `max_pixels` from its header (ImageTooLarge) before its
    pixels are decoded: PIL formats lazily, DICOM decoded to 8-bit grayscale (cxr.data.dicom). Use it
    in a `with` block."""
    path = Path(path)
    if path.suffix.lower() == DICOM_SUFFIX:
        size = path.stat().st_size
        if size > max_pixels * BYTES_PER_PIXEL_LIMIT:
            raise ImageTooLarge(
                path, f"{size:,} bytes, over {BYTES_PER_PIXEL_LIMIT} bytes per pixel of the limit of "
                f"{max_pixels:,} pixels (verify.max_pixels); downscale it or raise the limit",
            )  # fmt: skip
        why = size_problem(*dicom_size(path), max_pixels)
        if why:
            raise ImageTooLarge(path, why)
        return read_dicom(path)
    img = Image.open(path)
    why = pixel_problem(img, max_pixels)
    if why:
        img.close()
        raise ImageTooLarge(path, why)
    return img


def open_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into 8-bit RGB, honouring EXIF orientation; refuses images over `max_pixels`."""
    with open_image(path, max_pixels) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
            img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
        return img.convert("RGB")
