"""Safe archive extraction and the `{split}/{class}/file` layout every stage reads."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from cxr.errors import PipelineError
from cxr.images import SPLITS

# Folder names accepted for each split, compared case-insensitively.
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


class ArchiveError(PipelineError, ValueError):
    """An archive is unreadable, has an unsafe member, or does not hold the expected layout."""


def _check_member(archive: Path, name: str, is_link: bool, is_special: bool) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing it")
    if is_link:
        raise ArchiveError(f"{archive}: member {name!r} is a link; links are refused (they can point anywhere)")
    if is_special:
        raise ArchiveError(f"{archive}: member {name!r} is not a regular file or folder; refusing it")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a .zip, .tar, .tar.gz or .tgz into `target`, after checking every member first."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    _check_member(archive, info.filename, stat.S_ISLNK(mode), False)
                zf.extractall(target)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(archive, m.name, m.issym() or m.islnk(), not (m.isfile() or m.isdir()))
                tf.extractall(target, members=members, filter="data")
        else:
            raise ArchiveError(f"{archive}: unsupported archive type; use .zip, .tar, .tar.gz or .tgz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable archive ({exc})") from exc


def _split_dirs(folder: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        for split, aliases in SPLIT_ALIASES.items():
            if child.name.lower() in aliases:
                if split in found:
                    raise ArchiveError(
                        f"{folder}: both {found[split].name!r} and {child.name!r} look like the {split} split"
                    )
                found[split] = child
    return found


def find_split_root(folder: Path) -> dict[str, Path]:
    """The split folders of a dataset, looking through single wrapping folders (`dataset/train/...`)."""
    current = folder
    while True:
        found = _split_dirs(current)
        if found:
            missing = [s for s in SPLITS if s not in found]
            if missing:
                raise ArchiveError(
                    f"{current}: found {sorted(p.name for p in found.values())} but no {', '.join(missing)} split; "
                    f"expected folders named {', '.join('/'.join(SPLIT_ALIASES[s]) for s in SPLITS)} (any case)"
                )
            return found
        children = [p for p in current.iterdir() if not p.name.startswith(".") and not p.name.startswith("__MACOSX")]
        if len(children) == 1 and children[0].is_dir():
            current = children[0]
            continue
        raise ArchiveError(
            f"{folder}: no train/val/test folders found (layout {{split}}/{{class}}/file expected; "
            "splitting a {class}/file layout is not supported yet)"
        )


def arrange_splits(source: Path, out_dir: Path, move: bool = False) -> None:
    """Copy (or move) `source`'s split folders to `out_dir/{train,val,test}`."""
    for split, folder in find_split_root(source).items():
        if move:
            shutil.move(str(folder), str(out_dir / split))
        else:
            shutil.copytree(folder, out_dir / split)
