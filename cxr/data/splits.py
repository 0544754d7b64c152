"""The splits of a dataset on disk: which files, with which labels and patients, in a fixed order."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.images import is_image
from cxr.errors import PipelineError

SPLITS = ("train", "val", "test")
LABELS_CSV = "labels.csv"  # optional, per split: path,labels (labels separated by ";")
METADATA = ("patient_id", "source", "orig_width", "orig_height", "view")  # optional labels.csv columns kept


class DatasetError(PipelineError, ValueError):
    """The dataset on disk does not have the expected layout; the message names the path."""


@dataclass(frozen=True, eq=False)
class Split:
    """The image files of one split with their labels, in a deterministic order.

    `labels` is an int array (N,) of class indices, or for multi-label data a 0/1 float array
    (N, C) with one column per class.
    """

    name: str
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray


def confined(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refused (DatasetError naming `where`) unless it stays under `root` once
    symbolic links are resolved, and refused with any '..' in it: a data file may not reach outside its
    dataset, and the destination of its copy (built from this path) may not either."""
    if not relative or Path(relative).is_absolute() or "\\" in relative:
        raise DatasetError(f"{where}: path {relative!r} must be relative to {root}, with / separators")
    if ".." in Path(relative).parts:  # the copy's destination is built from this path: no climbing, even back in
        raise DatasetError(f"{where}: path {relative!r} contains '..'; write it from {root} downwards")
    path = Path(root) / relative
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise DatasetError(f"{where}: path {relative!r} leads outside {root}; refusing it")
    return path


def _read_labels_csv(split_dir: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Rows of `split_dir/labels.csv`: `path` (relative to the split folder) and `labels`
    (class names separated by `;`; empty: no finding, which only data.task multilabel accepts)."""
    csv_path = split_dir / LABELS_CSV
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"path", "labels"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{csv_path}: needs the columns path,labels; found {reader.fieldnames}")
        rows, seen = [], {}
        for line, row in enumerate(reader, start=2):
            labels = parse_labels(row["labels"])
            path = confined(split_dir, (row["path"] or "").strip(), f"{csv_path}:{line}")
            if not path.is_file():
                raise DatasetError(f"{csv_path}:{line}: {path} does not exist")
            unique_row(seen, path.resolve(), (line, labels), f"{csv_path}:{line}")
            row_metadata(row, f"{csv_path}:{line}")
            rows.append((path, labels))
    return rows


UNCERTAIN = "?"  # a label ending in it is an uncertain finding (CheXpert's -1 under data.uncertain: ignore)


def finding(label: str) -> str:
    """The finding a label names: `Edema?` (uncertain) and `Edema` both name Edema."""
    return label.removesuffix(UNCERTAIN)


def parse_labels(text: str | None) -> tuple[str, ...]:
    """A labels cell (class names separated by `;`) as sorted, distinct, stripped names; empty: no finding."""
    return tuple(sorted({x.strip() for x in (text or "").split(";") if x.strip()}))


def unique_row(seen: dict, key: Path, entry: tuple[int, tuple[str, ...]], where: str) -> None:
    """Refuse a second row for one file: a repeated row would train and score the film twice, and a
    row with other labels would give one film two answers."""
    if key in seen:
        first, labels = seen[key]
        what = (
            "repeats it"
            if labels == entry[1]
            else f"gives it other labels ({';'.join(entry[1])} vs {';'.join(labels)}); list all of a film's "
            "findings in one row, separated by ';'"
        )
        raise DatasetError(f"{where}: {key.name} already has a row (line {first}); this row {what}; one row per file")
    seen[key] = entry


def row_metadata(row: dict, where: str) -> dict[str, str]:
    """A row's METADATA columns (empty strings where absent); the size columns must be positive whole
    numbers of pixels (they feed verify's shortcut audit)."""
    found = {k: (row.get(k) or "").strip() for k in METADATA}
    for key in ("orig_width", "orig_height"):
        value = found[key]
        if value and not (value.isdigit() and 0 < int(value) <= 1_000_000):
            raise DatasetError(f"{where}: {key} {value!r} is not a size in pixels; write a whole number, or nothing")
    return found


def excluded_files(data_metrics: Path, root: Path) -> frozenset[Path]:
    """Files `verify` excluded (listed under `excluded` in its metrics file), as paths under `root`."""
    if not Path(data_metrics).is_file():
        return frozenset()
    return frozenset(Path(root) / rel for rel in json.loads(Path(data_metrics).read_text()).get("excluded", []))


def file_metadata(split_dir: Path) -> dict[Path, dict[str, str]]:
    """Per file of a split, the `patient_id`, `source`, `orig_width` and `orig_height` columns of its
    labels.csv (empty strings where absent)."""
    csv_path = Path(split_dir) / LABELS_CSV
    if not csv_path.is_file():
        return {}
    with csv_path.open(newline="") as f:
        return {
            Path(split_dir) / row["path"].strip(): row_metadata(row, f"{csv_path}:{line}")
            for line, row in enumerate(csv.DictReader(f), start=2)
        }


def split_patients(split_dir: Path) -> dict[str, list[Path]]:
    """Images per patient id, from a split's labels.csv `patient_id` column (empty if none)."""
    csv_path = Path(split_dir) / LABELS_CSV
    if not csv_path.is_file():
        return {}
    patients: dict[str, list[Path]] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if (row.get("patient_id") or "").strip():
                patients.setdefault(row["patient_id"].strip(), []).append(Path(split_dir) / row["path"].strip())
    return patients


def labelled_files(split_dir: Path, merge_by_name: bool = False) -> list[tuple[Path, tuple[str, ...]]]:
    """(image, class names) pairs of a split, in a deterministic order.

    Labels come from `labels.csv` in the split folder when it exists, else from class folders
    (`split/{class}/file`). With `merge_by_name`, a file name found in several class folders is
    one image with all of those labels, read from the first folder holding it.
    """
    split_dir = Path(split_dir)
    if (split_dir / LABELS_CSV).is_file():
        return _read_labels_csv(split_dir)
    merged: dict[str, tuple[Path, list[str]]] = {}
    pairs = []
    for cls in split_classes(split_dir):
        for path in sorted(p for p in (split_dir / cls).iterdir() if is_image(p)):
            if merge_by_name:
                merged.setdefault(path.name, (path, []))[1].append(cls)
            else:
                pairs.append((path, (cls,)))
    return [(path, tuple(labels)) for path, labels in merged.values()] if merge_by_name else pairs


def split_classes(split_dir: Path) -> tuple[str, ...]:
    """Class names of a split, sorted: the labels in its labels.csv, else its sub-folder names."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split folder not found; expected data/raw/{{train,val,test}}/{{class}}/")
    if (split_dir / LABELS_CSV).is_file():
        return tuple(sorted({finding(label) for _, labels in _read_labels_csv(split_dir) for label in labels}))
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def scan_split(
    root: Path,
    name: str,
    classes: tuple[str, ...] | None = None,
    multilabel: bool = False,
    exclude: frozenset[Path] = frozenset(),
) -> Split:
    """The images of `root/name` with class-index labels, or multi-hot rows when `multilabel`;
    files in `exclude` (unreadable ones that verify skipped) are left out."""
    split_dir = Path(root) / name
    found = split_classes(split_dir)
    classes = classes or found
    if set(found) != set(classes):
        raise DatasetError(f"{split_dir}: classes {list(found)} differ from the expected {list(classes)}")
    pairs = [(p, lb) for p, lb in labelled_files(split_dir, merge_by_name=multilabel) if p not in exclude]
    files = tuple(path for path, _ in pairs)
    if multilabel:
        return Split(name, tuple(classes), files, multi_hot(pairs, classes))
    uncertain = [str(path) for path, labels in pairs if any(lb.endswith(UNCERTAIN) for lb in labels)]
    if uncertain:
        raise DatasetError(
            f"{split_dir}: {len(uncertain)} images have uncertain labels ending in '{UNCERTAIN}' (e.g. "
            f"{uncertain[0]}); only data.task: multilabel reads them (out of the loss and of that finding's scores)"
        )
    unlabelled = [str(path) for path, labels in pairs if not labels]
    if unlabelled:
        raise DatasetError(
            f"{split_dir}: {len(unlabelled)} images have no label in labels.csv (e.g. {unlabelled[0]}); only "
            "data.task: multilabel reads an empty labels cell (no finding); give each image its class"
        )
    several = [str(path) for path, labels in pairs if len(labels) > 1]
    if several:
        raise DatasetError(
            f"{split_dir}: {len(several)} images have several labels (e.g. {several[0]}); "
            "use data.task: multilabel, or give each image one label"
        )
    return Split(name, tuple(classes), files, np.asarray([classes.index(lb[0]) for _, lb in pairs], dtype=np.int64))


def multi_hot(pairs: list[tuple[Path, tuple[str, ...]]], classes: Sequence[str]) -> np.ndarray:
    """(N, C) float rows: 1 for a finding, 0 for none, NaN for an uncertain one (`Edema?`) not also stated certain."""
    rows = np.zeros((len(pairs), len(classes)), dtype=np.float32)
    for row, (_, labels) in enumerate(pairs):
        rows[row, [classes.index(finding(c)) for c in labels if c.endswith(UNCERTAIN)]] = np.nan
        rows[row, [classes.index(c) for c in labels if not c.endswith(UNCERTAIN)]] = 1.0
    return rows


def class_counts(pairs: list[tuple[Path, tuple[str, ...]]], classes: tuple[str, ...]) -> dict[str, int]:
    """Images per class among (file, labels) pairs; an image with two labels counts for both."""
    return {cls: sum(cls in labels for _, labels in pairs) for cls in classes}


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Images per class in each split folder present under `root`."""
    root = Path(root)
    return {
        split: class_counts(labelled_files(root / split), split_classes(root / split))
        for split in SPLITS
        if (root / split).is_dir()
    }
