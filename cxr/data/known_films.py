"""Films already in data/raw, and the files elsewhere that repeat one of them (exactly or nearly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.fingerprints import read_file
from cxr.data.near_duplicates import near_any
from cxr.data.splits import SPLITS


@dataclass(frozen=True)
class KnownFilms:
    """Fingerprints of the films of some splits of data/raw (pixel digests, perceptual hashes, thumbnails), and
    which other files repeat one of them exactly or nearly: what external leaves out of its scores (a repeat of any
    split's film) and what pretrain refuses in its folders (a repeat of a val or test film)."""

    digests: frozenset[str]
    hashes: np.ndarray
    thumbs: list  # each film's thumbnail, a near-duplicate candidate is confirmed on
    near_bits: int
    max_pixels: int

    @classmethod
    def read(cls, raw_dir: Path, near_bits: int, max_pixels: int, splits: tuple[str, ...] = SPLITS) -> KnownFilms:
        records = []
        for split in splits:
            if (Path(raw_dir) / split).is_dir():
                for path in sorted(p for p in (Path(raw_dir) / split).rglob("*") if p.is_file()):
                    record = read_file(split, path, max_pixels)
                    if not record.problem:
                        records.append(record)
        hashes = np.stack([r.dhash for r in records]) if records else np.zeros((0, 4), np.uint64)
        return cls(frozenset(r.digest for r in records), hashes, [r.thumb for r in records], near_bits, max_pixels)

    def repeated(self, files: list[Path]) -> list[bool]:
        """Whether each file repeats a known film exactly (pixels) or nearly (perceptual hash within
        near_bits, confirmed on thumbnails; 0 = exact copies only). Unreadable files are left to decoding."""
        out = []
        for path in files:
            record = read_file("external", path, self.max_pixels)
            if record.problem:
                out.append(False)
                continue
            near = near_any(self.hashes, record.dhash, self.near_bits, self.thumbs, record.thumb)
            out.append(record.digest in self.digests or near)
        return out
