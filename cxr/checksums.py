"""File digests: pinned downloads and the checkpoint a metrics file was written for."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (hashlib.file_digest: read in blocks, the GIL released)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
