"""Datasets as they come (split folders, `{class}/file` folders or a root labels.csv) arranged
into the `{split}/{class}/file` layout every stage reads, splitting where needed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from cxr.data.archives import ArchiveError
from cxr.data.grouping import Grouping, assign_splits
from cxr.data.images import is_image
from cxr.data.splits import LABELS_CSV, METADATA, SPLITS, confined, parse_labels, row_metadata, unique_row

UNLABELED = "unlabeled"  # data/raw/unlabeled: a split folder of images without labels (a hand-in set)
# Folder names accepted for each split, compared case-insensitively.
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


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
    files, seen, extra = [], {}, []
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        path = confined(base, (row["path"] or "").strip(), where)
        if not path.is_file():
            raise ArchiveError(f"{where}: {row['path']!r} does not exist")
        unique_row(seen, path.resolve(), (line, parse_labels(row[label_col])), where)
        files.append(path)
        extra.append([row_metadata(row, where)[k] for k in METADATA[1:]])  # kept for verify's shortcut audit
    labels = [row[label_col].strip() for row in rows]
    patients = [(row.get("patient_id") or "").strip() or None for row in rows]
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
    unlabeled = [s for s in layout if s in missing]  # two or more (val/ and test/ flat): one sub-folder each
    for split, folder in layout.items():
        dest = out_dir / split
        if split in missing:
            dest = out_dir / UNLABELED / (folder.name if len(unlabeled) > 1 else "")
        if move:
            shutil.move(str(folder), str(dest))
        else:
            shutil.copytree(folder, dest)
    if (out_dir / UNLABELED).is_dir():
        described += f"; {UNLABELED}/: images without labels, predicted by evaluate into a submission file"
    if missing:
        described += "; " + carve_splits(out_dir, missing, val, test, seed, grouping)
    return described
