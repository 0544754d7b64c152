"""The public chest X-ray collections read from their own metadata files (`data.layout`), into data/raw's
`{split}/images/...` + per-split labels.csv (labels, patient id, source, original size, view).

nih-cxr14 (NIH ChestX-ray14, Wang et al. 2017): `Data_Entry_2017.csv` (or `Data_Entry_2017_v2020.csv`) with
`Image Index`, `Finding Labels` (findings joined by `|`; `No Finding` is none of the 14), `Patient ID`,
`View Position` and `OriginalImage[Width,Height]`; the official `train_val_list.txt` / `test_list.txt`; the
PNGs anywhere below the folder (`images/`, or `images_001/images/` ... as the download unpacks). The test
list is the test split; validation is carved from train_val by patient (`data.split.val`, seeded), so no
patient is in two splits. A film with no finding has an empty `labels` cell: data.task must be multilabel.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

from cxr.data.splits import LABELS_CSV, METADATA, DatasetError

NIH_ENTRIES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
FRONTAL = frozenset({"PA", "AP"})


def _nih_entries(folder: Path) -> Path:
    for name in NIH_ENTRIES:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(
        f"data.layout=nih-cxr14: {folder} has no {' or '.join(NIH_ENTRIES)}; put the collection's metadata "
        "file at the folder's top level, as NIH publishes it"
    )


def _listed(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        raise DatasetError(f"data.layout=nih-cxr14: {path} not found: the official split lists sit beside the metadata")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _images_below(folder: Path) -> dict[str, Path]:
    """Every PNG below `folder` by file name (one walk; NIH names are unique)."""
    found: dict[str, Path] = {}
    for top, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(".png"):
                found.setdefault(name, Path(top) / name)
    return found


def _carve_by_patient(names: list[str], patient_of: dict[str, str], fraction: float, seed: int) -> set[str]:
    """The names whose patients (a seeded share `fraction` of them, sorted first) form the validation split."""
    patients = sorted({patient_of[n] for n in names})
    random.Random(seed).shuffle(patients)
    chosen = set(patients[: max(1, round(len(patients) * fraction))])
    return {n for n in names if patient_of[n] in chosen}


def _nih_rows(entries: Path, frontal_only: bool) -> dict[str, dict[str, str]]:
    """Per image name, its labels.csv row (labels joined by ';'), from the metadata file."""
    rows: dict[str, dict[str, str]] = {}
    with entries.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NIH_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetError(f"{entries}: missing columns {missing}; is it NIH's Data_Entry file?")
        for line, row in enumerate(reader, start=2):
            name = row["Image Index"].strip()
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise DatasetError(f"{entries}:{line}: Image Index {name!r} must be a plain file name")
            if frontal_only and row["View Position"].strip().upper() not in FRONTAL:
                continue
            findings = [x.strip() for x in row["Finding Labels"].split("|") if x.strip() and x.strip() != "No Finding"]
            rows[name] = {
                "labels": ";".join(sorted(set(findings))),
                "patient_id": row["Patient ID"].strip(),
                "source": "nih-cxr14",
                "orig_width": (row.get("OriginalImage[Width") or "").strip(),  # the header's one column, split by CSV
                "orig_height": (row.get("Height]") or "").strip(),
                "view": row["View Position"].strip(),
            }
    return rows


def nih_cxr14(folder: Path, out_dir: Path, val: float, seed: int, frontal_only: bool = False) -> str:
    """NIH ChestX-ray14 at `folder` into `out_dir` (see the module's docstring); what was done."""
    rows = _nih_rows(_nih_entries(folder), frontal_only)
    images = _images_below(folder)
    splits = {"test": [n for n in _listed(folder, "test_list.txt") if n in rows]}
    train_val = [n for n in _listed(folder, "train_val_list.txt") if n in rows]
    missing = [n for n in splits["test"] + train_val if n not in images]
    if missing:
        raise DatasetError(
            f"data.layout=nih-cxr14: {len(missing)} listed images are not below {folder} (e.g. {missing[0]}); "
            "unpack every images_*.tar.gz there"
        )
    held = _carve_by_patient(train_val, {n: rows[n]["patient_id"] for n in train_val}, val, seed)
    splits["val"] = [n for n in train_val if n in held]
    splits["train"] = [n for n in train_val if n not in held]
    for split, names in splits.items():
        (out_dir / split / "images").mkdir(parents=True, exist_ok=True)
        with (out_dir / split / LABELS_CSV).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", *METADATA])
            for name in names:
                shutil.copy2(images[name], out_dir / split / "images" / name)
                writer.writerow([f"images/{name}", rows[name]["labels"], *(rows[name][k] for k in METADATA)])
    counts = ", ".join(f"{s} {len(splits[s])}" for s in ("train", "val", "test"))
    return f"NIH ChestX-ray14 layout: official test list, validation carved by patient (seed {seed}); {counts}"
