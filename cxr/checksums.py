"""File digests: pinned downloads, the checkpoint a metrics file was written for, and the data a resumed
run or a kept fold was made from."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (hashlib.file_digest: read in blocks, the GIL released)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_digest(root: Path | str, pattern: str = "*") -> str:
    """sha256 over the relative names and bytes of the files under `root` matching `pattern`, in a fixed order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()
