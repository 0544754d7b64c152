"""File digests: pinned downloads and the checkpoint a metrics file was written for."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BLOCK = 1 << 20  # bytes hashed per read


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
