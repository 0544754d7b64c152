"""Finished cross-validation folds kept outside DVC's outputs, so that a k-fold run killed in fold 4
resumes at fold 4 (`train.resume: true`) instead of training folds 1-3 again: DVC deletes
models/cv before the stage reruns, but not this git-ignored folder of hard links.

A kept fold is reused only when everything that made it is the same: its signature holds the
params that change a result, the fold's decoded images (so the data and the fold assignment) and
the code of the `cxr` package."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from cxr.atomic import link_or_copy, write_json
from cxr.checksums import sha256_of

SIGNATURE = "signature.json"
CODE_ROOT = Path(__file__).resolve().parents[1]  # the cxr package


def tree_digest(root: Path, pattern: str = "*") -> str:
    """sha256 over the relative names and bytes of the files under `root` matching `pattern`, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def code_digest() -> str:
    """Digest of the cxr package's Python sources: any code change makes kept folds stale."""
    return tree_digest(CODE_ROOT, "*.py")


def _link_tree(source: Path, target: Path, skip: frozenset[str] = frozenset()) -> None:
    """Link every file of `source` into `target` (cxr.atomic.link_or_copy)."""
    for path in sorted(source.rglob("*")):
        if path.relative_to(source).parts[0] in skip or not path.is_file():
            continue
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, dest)


class KeptFolds:
    """`kept_dir/fold{i}`: the files of a finished fold (not its decoded store, rewritten each run)
    and the signature they were made under."""

    DECODED = "decoded"  # the fold's decoded store, which cross_validate rewrites before restoring

    def __init__(self, kept_dir: Path):
        self.kept_dir = kept_dir

    def restore(self, fold: int, where: Path, signature: dict) -> bool:
        """Link fold `fold`'s kept files into `where` if they were made under `signature`."""
        kept = self.kept_dir / f"fold{fold}"
        try:
            if json.loads((kept / SIGNATURE).read_text()) != signature:
                return False
        except (OSError, ValueError):
            return False
        _link_tree(kept, where, skip=frozenset({SIGNATURE}))
        return True

    def keep(self, fold: int, where: Path, signature: dict) -> None:
        """Keep a finished fold: its files first, the signature last (a fold killed mid-keep is not reused)."""
        kept = self.kept_dir / f"fold{fold}"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)
        _link_tree(where, kept, skip=frozenset({self.DECODED}))
        write_json(kept / SIGNATURE, signature)
