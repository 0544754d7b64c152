"""Safe archive extraction and the `{split}/{class}/file` layout every stage reads."""

from __future__ import annotations

import random
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from cxr.errors import PipelineError
from cxr.images import SPLITS, is_image, pixel_digest

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


def _is_class_level(folder: Path) -> bool:
    """Two or more sub-folders, each holding images directly: a `{class}/file` layout."""
    dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    return len(dirs) >= 2 and all(any(is_image(f) for f in d.iterdir()) for d in dirs)


def find_layout(folder: Path) -> dict[str, Path] | Path:
    """The split folders of a dataset ({split: path}), or the folder of a `{class}/file` layout
    that has no splits yet. Single wrapping folders (`dataset/train/...`) are looked through."""
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
        if _is_class_level(current):
            return current
        children = [p for p in current.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(children) == 1 and children[0].is_dir():
            current = children[0]
            continue
        raise ArchiveError(
            f"{folder}: neither train/val/test folders nor class folders of images found "
            "(expected {split}/{class}/file or {class}/file)"
        )


def split_by_fractions(class_root: Path, out_dir: Path, val: float, test: float, seed: int) -> None:
    """Copy a `{class}/file` layout into `out_dir/{train,val,test}/{class}/`, stratified by class
    and seeded. Files with identical decoded pixels (the same image twice, or one image filed
    under several classes) always land in the same split, so the split never leaks."""
    groups: dict[str, list[Path]] = {}
    first_class: dict[str, str] = {}
    for cls_dir in sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in cls_dir.iterdir() if is_image(p)):
            with Image.open(path) as img:
                img.load()
                key = pixel_digest(img)
            groups.setdefault(key, []).append(path)
            first_class.setdefault(key, cls_dir.name)
    rng = random.Random(seed)
    for cls in sorted(set(first_class.values())):
        keys = sorted(k for k, c in first_class.items() if c == cls)
        rng.shuffle(keys)
        n_test, n_val = round(len(keys) * test), round(len(keys) * val)
        for i, key in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            for path in groups[key]:
                dest = out_dir / split / path.parent.name / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
    for split in SPLITS:  # every split gets every class folder, even if a small class left one empty
        for cls_dir in class_root.iterdir():
            if cls_dir.is_dir() and not cls_dir.name.startswith("."):
                (out_dir / split / cls_dir.name).mkdir(parents=True, exist_ok=True)


def arrange_splits(source: Path, out_dir: Path, val: float, test: float, seed: int, move: bool = False) -> str:
    """Put `source`'s dataset into `out_dir/{train,val,test}`; return which layout was found."""
    layout = find_layout(source)
    if isinstance(layout, Path):
        split_by_fractions(layout, out_dir, val, test, seed)
        return f"{{class}}/file layout, split {1 - val - test:.2f}/{val:.2f}/{test:.2f} by class (seed {seed})"
    for split, folder in layout.items():
        if move:
            shutil.move(str(folder), str(out_dir / split))
        else:
            shutil.copytree(folder, out_dir / split)
    return "{split}/{class}/file layout (" + ", ".join(f"{s}={p.name}" for s, p in layout.items()) + ")"
