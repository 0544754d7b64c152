"""Datasets as they come (split folders, `{class}/file` folders or a root labels.csv) arranged
into the `{split}/{class}/file` layout every stage reads, splitting where needed."""

from __future__ import annotations

import csv
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.archives import ArchiveError
from cxr.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, check_pixels, is_image, pixel_digest
from cxr.data.near_duplicates import difference_hash, near_pairs
from cxr.data.splits import LABELS_CSV, METADATA, SPLITS, DatasetError, confined

UNLABELED = "unlabeled"  # data/raw/unlabeled: a split folder of images without labels (a hand-in set)
# Folder names accepted for each split, compared case-insensitively.
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


@dataclass(frozen=True)
class Grouping:
    """How images are grouped before splitting (verify's params, applied at split time too):
    near-duplicates within `near_bits`, images over `max_pixels` refused, and a file that does not
    decode either fails the split or (`skip_corrupt`, verify.on_corrupt: skip) stands alone, to be
    excluded by verify."""

    near_bits: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip_corrupt: bool = False


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


def _is_labelled(split_dir: Path) -> bool:
    """A split folder with class folders of images or a labels.csv (not a flat folder of images)."""
    return (
        (split_dir / LABELS_CSV).is_file()
        or _is_class_level(split_dir)
        or (any(p.is_dir() for p in split_dir.iterdir()) and not any(is_image(p) for p in split_dir.iterdir()))
    )


def find_layout(folder: Path) -> dict[str, Path] | Path:
    """The split folders of a dataset ({split: path}), a root `labels.csv`, or the folder of a
    `{class}/file` layout with no splits yet. Single wrapping folders are looked through."""
    current = folder
    while True:
        found = _split_dirs(current)
        if found:
            if "train" not in found or not _is_labelled(found["train"]):
                raise ArchiveError(
                    f"{current}: found {sorted(p.name for p in found.values())} but no labelled train split; "
                    f"expected folders named {', '.join('/'.join(SPLIT_ALIASES[s]) for s in SPLITS)} (any case) "
                    "holding {class}/file images"
                )
            return found
        if (current / LABELS_CSV).is_file():
            return current / LABELS_CSV
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


class _Groups:
    """Union-find over image indices: images sharing pixels or a patient end up in one group."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(j)] = self.find(i)

    def join_by(self, keys: list[str | None]) -> None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                self.union(first.setdefault(key, i), i)


def _fingerprint(path: Path, max_pixels: int) -> tuple[str, np.ndarray]:
    """An image's pixel digest and perceptual hash; ImageTooLarge or the decoder's error if it has none."""
    with Image.open(path) as img:
        check_pixels(img, path, max_pixels)
        img.load()
        return pixel_digest(img), difference_hash(img)


def image_groups(files: list[Path], patients: list[str | None], grouping: Grouping = Grouping()) -> list[int]:
    """A group id per file: files with identical pixels, near-identical ones (perceptual hash
    within `grouping.near_bits`) or one patient share a group, which splits and folds never separate."""
    groups = _Groups(len(files))
    digests: list[str | None] = []
    decoded, hashes = [], []
    for i, path in enumerate(files):
        try:
            digest, phash = _fingerprint(path, grouping.max_pixels)
        except Exception as exc:  # noqa: BLE001 - any decoder failure (or a pixel bomb) is a bad file
            decoder = f"{path} does not decode ({type(exc).__name__}: {exc})"
            why = str(exc) if isinstance(exc, ImageTooLarge) else decoder
            if not grouping.skip_corrupt:
                raise DatasetError(
                    f"cannot split the dataset: {why}; remove or replace it, or set verify.on_corrupt: skip"
                ) from None
            print(f"warning: {why}; split on its own, verify.on_corrupt: skip will leave it out")
            digests.append(None)
            continue
        digests.append(digest)
        decoded.append(i)
        hashes.append(phash)
    groups.join_by(digests)
    groups.join_by(patients)
    if hashes:
        for i, j in near_pairs(np.stack(hashes), grouping.near_bits):
            groups.union(decoded[i], decoded[j])
    return [groups.find(i) for i in range(len(files))]


def assign_splits(
    files: list[Path],
    strata: list[str],
    patients: list[str | None],
    val: float,
    test: float,
    seed: int,
    grouping: Grouping = Grouping(),
) -> list[str]:
    """A split name per file: stratified by `strata`, seeded, and never separating files with
    identical pixels, near-identical ones (perceptual hash within `near_bits`) or one patient."""
    group = image_groups(files, patients, grouping)
    roots = sorted(set(group))
    rng = random.Random(seed)
    split_of_root = {}
    for stratum in sorted(set(strata)):
        members = [r for r in roots if strata[r] == stratum]
        rng.shuffle(members)
        n_test, n_val = round(len(members) * test), round(len(members) * val)
        for i, root in enumerate(members):
            split_of_root[root] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [split_of_root[g] for g in group]


def assign_folds(group: list[int], strata: list[str], k: int, seed: int) -> list[int]:
    """A fold (0..k-1) per file: whole groups dealt out per stratum in a seeded order, each to the
    fold holding the fewest files of that stratum so far (folds stratified and about equal)."""
    rng = random.Random(seed)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        members.setdefault(g, []).append(i)
    fold_of_group = {}
    for stratum in sorted(set(strata)):
        roots = sorted(g for g in members if strata[g] == stratum)
        rng.shuffle(roots)
        size = [0] * k
        for g in roots:
            fold = min(range(k), key=lambda f: (size[f], f))
            fold_of_group[g] = fold
            size[fold] += len(members[g])
    return [fold_of_group[g] for g in group]


def split_by_fractions(
    class_root: Path, out_dir: Path, val: float, test: float, seed: int, grouping: Grouping = Grouping()
) -> None:
    """Copy a `{class}/file` layout into `out_dir/{train,val,test}/{class}/`, stratified by class
    and seeded; identical images (one image filed twice, or under two classes) stay together."""
    class_dirs = sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [path for d in class_dirs for path in sorted(p for p in d.iterdir() if is_image(p))]
    splits = assign_splits(files, [p.parent.name for p in files], [None] * len(files), val, test, seed, grouping)
    for path, split in zip(files, splits, strict=True):
        dest = out_dir / split / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    for split in SPLITS:  # every split gets every class folder, even if a small class left one empty
        for d in class_dirs:
            (out_dir / split / d.name).mkdir(parents=True, exist_ok=True)


def split_csv_dataset(
    csv_path: Path, out_dir: Path, val: float, test: float, seed: int, grouping: Grouping = Grouping()
) -> None:
    """A root CSV (`path`, `labels` or `label`, optional `patient_id`, `source` and `split`) into
    `out_dir/{split}/images/...` plus a per-split labels.csv. Without a `split` column the split
    is made here, by patient when patient ids are given."""
    base = csv_path.parent
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        label_col = "labels" if "labels" in columns else "label"
        if not {"path", label_col} <= columns:
            raise ArchiveError(f"{csv_path}: needs columns path and label (or labels); found {sorted(columns)}")
        rows = list(reader)
    files = []
    for line, row in enumerate(rows, start=2):
        path = confined(base, (row["path"] or "").strip(), f"{csv_path}:{line}")
        if not path.is_file():
            raise ArchiveError(f"{csv_path}:{line}: {row['path']!r} does not exist")
        files.append(path)
    labels = [row[label_col].strip() for row in rows]
    patients = [(row.get("patient_id") or "").strip() or None for row in rows]
    # kept for verify's shortcut audit
    extra = [[(row.get(k) or "").strip() for k in METADATA[1:]] for row in rows]
    if "split" in columns:
        alias = {a: s for s, names in SPLIT_ALIASES.items() for a in names}
        splits = []
        for line, row in enumerate(rows, start=2):
            name = row["split"].strip().lower()
            if name not in alias:
                raise ArchiveError(f"{csv_path}:{line}: split {row['split']!r} is not one of train/val/test")
            splits.append(alias[name])
    else:
        splits = assign_splits(files, [lb.split(";")[0] for lb in labels], patients, val, test, seed, grouping)
    written: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    for path, label, patient, more, split in zip(files, labels, patients, extra, splits, strict=True):
        rel = Path("images") / path.relative_to(base)
        dest = out_dir / split / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        written[split].append([rel.as_posix(), label, patient or "", *more])
    for split, table in written.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        with (out_dir / split / LABELS_CSV).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", *METADATA])
            writer.writerows(table)


def carve_splits(out_dir: Path, missing: list[str], val: float, test: float, seed: int, grouping: Grouping) -> str:
    """Move the `missing` labelled splits (val and/or test) out of `out_dir/train`, stratified by
    class, seeded, and keeping identical, near-identical images and patients together."""
    train = out_dir / "train"
    class_dirs = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [path for d in class_dirs for path in sorted(p for p in d.iterdir() if is_image(p))]
    fractions = {"val": val if "val" in missing else 0.0, "test": test if "test" in missing else 0.0}
    splits = assign_splits(files, [p.parent.name for p in files], [None] * len(files), seed=seed,
                           grouping=grouping, **fractions)  # fmt: skip
    for path, split in zip(files, splits, strict=True):
        if split != "train":
            dest = out_dir / split / path.parent.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))
    for split in missing:
        for d in class_dirs:
            (out_dir / split / d.name).mkdir(parents=True, exist_ok=True)
    return ", ".join(f"{s} carved out of train ({fractions[s]:.2f} of its images)" for s in missing)


def arrange_splits(
    source: Path,
    out_dir: Path,
    val: float,
    test: float,
    seed: int,
    grouping: Grouping = Grouping(),
    move: bool = False,
) -> str:
    """Put `source`'s dataset into `out_dir/{train,val,test}` (and an unlabeled split folder into
    `out_dir/unlabeled`); return which layout was found and what was done to it."""
    layout = find_layout(source)
    if isinstance(layout, Path) and layout.is_file():
        split_csv_dataset(layout, out_dir, val, test, seed, grouping)
        return f"CSV layout ({layout.name}), split by patient where ids are given (seed {seed})"
    if isinstance(layout, Path):
        split_by_fractions(layout, out_dir, val, test, seed, grouping)
        return f"{{class}}/file layout, split {1 - val - test:.2f}/{val:.2f}/{test:.2f} by class (seed {seed})"
    described = "{split}/{class}/file layout (" + ", ".join(f"{s}={p.name}" for s, p in layout.items()) + ")"
    missing = [s for s in SPLITS if s not in layout or not _is_labelled(layout[s])]
    for split, folder in layout.items():
        dest = out_dir / (split if split not in missing else UNLABELED)
        if move:
            shutil.move(str(folder), str(dest))
        else:
            shutil.copytree(folder, dest)
    if (out_dir / UNLABELED).is_dir():
        described += f"; {UNLABELED}/: images without labels, predicted by evaluate into a submission file"
    if missing:
        described += "; " + carve_splits(out_dir, missing, val, test, seed, grouping)
    return described
