"""Finished cross-validation folds kept outside DVC's outputs, so that a k-fold run killed in fold 4
resumes at fold 4 (`train.resume: true`) instead of training folds 1-3 again: DVC deletes
models/cv before the stage reruns, but not this git-ignored folder of hard links.

A kept fold is reused only when everything that made it is the same: its signature holds the
params that change a result, the fold's decoded images (so the data and the fold assignment) and
the code of the `cxr` package; and only while each kept file has the sha256 it was kept with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxr.atomic import link_or_copy, write_json
from cxr.checksums import sha256_of, tree_digest

SIGNATURE = "signature.json"
CODE_ROOT = Path(__file__).resolve().parents[1]  # the cxr package


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
        """Link fold `fold`'s kept files into `where` if they were made under `signature` and each still
        has the sha256 it was kept with (an edited test.json or a deleted model.pt retrains the fold)."""
        kept = self.kept_dir / f"fold{fold}"
        try:
            record = json.loads((kept / SIGNATURE).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("signature") != signature:
            return False
        changed = [rel for rel, digest in record.get("files", {}).items() if _digest_or_none(kept / rel) != digest]
        if changed or not record.get("files"):
            print(
                f"crossval: fold {fold + 1}: kept files changed since they were kept ({', '.join(changed)}); "
                "training it again",
                flush=True,
            )
            return False
        _link_tree(kept, where, skip=frozenset({SIGNATURE}))
        return True

    def keep(self, fold: int, where: Path, signature: dict) -> None:
        """Keep a finished fold: its files first, then the signature with each file's sha256 (a fold killed
        mid-keep is not reused)."""
        kept = self.kept_dir / f"fold{fold}"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)
        _link_tree(where, kept, skip=frozenset({self.DECODED}))
        files = {p.relative_to(kept).as_posix(): sha256_of(p) for p in sorted(kept.rglob("*")) if p.is_file()}
        write_json(kept / SIGNATURE, {"signature": signature, "files": files})


def _digest_or_none(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None
