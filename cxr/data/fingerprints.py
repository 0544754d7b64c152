"""The one reading of an image file that verify, grouping and external sets share: its pixels'
identity (digest, perceptual hash), mode, size and appearance, or why it is unusable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.images import ImageTooLarge, open_image, pixel_digest
from cxr.data.near_duplicates import difference_hash, thumbnail
from cxr.data.shortcuts import appearance


@dataclass
class FileRecord:
    """What one reading of an image file found: its pixels' identity, or why it is unusable."""

    split: str
    path: Path
    problem: str = ""  # empty for a usable image
    mode: str = ""
    size: tuple[int, int] = (0, 0)
    digest: str = ""  # of the decoded pixels
    dhash: np.ndarray | None = None  # perceptual hash
    thumb: np.ndarray | None = None  # 32 x 32 thumbnail a near-duplicate candidate is confirmed on
    looks: dict = field(default_factory=dict)  # cxr.data.shortcuts.appearance: what should not carry the label


    @property
    def why(self) -> str:
        """The problem with the file named: `<path>: <problem>`."""
        return f"{self.path}: {self.problem}"


def read_file(split: str, path: Path, max_pixels: int) -> FileRecord:
    """Open, size-check (from the header, before decoding) and decode one file."""
    try:
        with open_image(path, max_pixels) as img:
            img.load()
            looks = appearance(img)
            return FileRecord(
                split, path, "", img.mode, img.size, pixel_digest(img), difference_hash(img), thumbnail(img), looks
            )
    except ImageTooLarge as exc:
        return FileRecord(split, path, exc.why)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        return FileRecord(split, path, f"does not decode ({type(exc).__name__}: {exc})")
