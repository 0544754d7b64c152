"""The public chest X-ray collections read from their own metadata files (`data.layout`), into data/raw's
`{split}/images/...` + per-split labels.csv (labels, patient id, source, original size, view). Where a set has
no official validation list, validation is carved from its training part by patient (`data.split.val`, seeded),
so no patient is in two splits.

- nih-cxr14 (NIH ChestX-ray14, Wang et al. 2017): `Data_Entry_2017.csv` (or `_v2020`) with `Image Index`,
  `Finding Labels` (`|`-joined; `No Finding` is none of the 14), `Patient ID`, `View Position` and
  `OriginalImage[Width,Height]`; the official `train_val_list.txt` / `test_list.txt`; PNGs anywhere below.
  14 findings, data.task multilabel; a film with no finding has an empty `labels` cell.
- chexpert (CheXpert, Irvin et al. 2019): `train.csv` and `valid.csv` (`Path` as published, e.g.
  `CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`, read from the folder or its parent),
  `Frontal/Lateral`, `AP/PA` and the 14 observation columns coded 1, 0, -1 (uncertain) or blank (not
  mentioned: negative). valid.csv (radiologist consensus, no uncertain labels) is the test split; with a
  `test.csv` beside it, that is the test split and valid.csv the validation split. Uncertain labels follow
  `data.uncertain`: u-ones (positive), u-zeros (negative) or ignore (`Edema?`: left out of the loss and of
  that finding's scores). data.task multilabel.
- rsna-pneumonia (RSNA Pneumonia Detection Challenge 2018): `stage_2_train_labels.csv` (`patientId`, box,
  `Target`; one row per box) and `stage_2_detailed_class_info.csv` (`class`), DICOMs in
  `stage_2_train_images/` (stage_1 names too). Only the training part is labelled, so test and validation are
  carved from it (`data.split.test`, `data.split.val`). binary: pneumonia (Target 1) / normal; multiclass:
  the three detailed classes (lung_opacity, not_normal, normal). View and size from each DICOM header.
- covidx (COVID-Net's COVIDx CXR): `train.txt`, `test.txt` (and `val.txt` from CXR-3 on), one film a line:
  `patient_id filename label [source]`, images in `train/`, `test/` (`val/`). Labels `COVID-19`, `pneumonia`,
  `normal` (multiclass: covid, pneumonia, normal) or `positive` / `negative` (binary only); binary is covid
  against non-covid.
"""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr.data.splits import LABELS_CSV, METADATA, UNCERTAIN, DatasetError, confined

NIH_ENTRIES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
FRONTAL = frozenset({"PA", "AP"})
CHEXPERT_FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                     "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                     "Pleural Other", "Fracture", "Support Devices")  # fmt: skip
RSNA_CLASSES = {"Lung Opacity": "lung_opacity", "No Lung Opacity / Not Normal": "not_normal", "Normal": "normal"}
COVIDX_LABELS = {"covid-19": "covid", "covid": "covid", "pneumonia": "pneumonia", "normal": "normal",
                 "positive": "covid", "negative": "non-covid"}  # fmt: skip


@dataclass(frozen=True)
class Film:
    """One film of a collection: where it is, its name under `{split}/images/`, its labels.csv row."""

    source: Path
    name: str
    labels: str
    meta: dict[str, str]


def _fail(layout: str, what: str) -> DatasetError:
    return DatasetError(f"data.layout={layout}: {what}")


def _carve_by_patient(films: list[Film], fraction: float, seed: int) -> tuple[list[Film], list[Film]]:
    """(kept, carved): a seeded share `fraction` of the patients (sorted first) and all their films carved."""
    patients = sorted({f.meta["patient_id"] for f in films})
    random.Random(seed).shuffle(patients)
    chosen = set(patients[: max(1, round(len(patients) * fraction))]) if fraction > 0 else set()
    kept = [f for f in films if f.meta["patient_id"] not in chosen]
    return kept, [f for f in films if f.meta["patient_id"] in chosen]


def _write_splits(out_dir: Path, splits: dict[str, list[Film]], layout: str) -> str:
    """Each split's films copied to `{split}/images/<name>` and its labels.csv; the counts, said."""
    for split, films in splits.items():
        if not films:
            raise _fail(layout, f"the {split} split would be empty; is the folder the whole collection?")
        (out_dir / split / "images").mkdir(parents=True, exist_ok=True)
        with (out_dir / split / LABELS_CSV).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", *METADATA])
            for film in films:
                target = confined(out_dir / split / "images", film.name, f"{layout} film {film.name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(film.source, target)
                writer.writerow([f"images/{film.name}", film.labels, *(film.meta.get(k, "") for k in METADATA)])
    return ", ".join(f"{s} {len(splits[s])}" for s in ("train", "val", "test"))


def _read_csv(path: Path, layout: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise _fail(layout, f"{path} not found: put the collection's metadata files at the folder's top level")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise _fail(layout, f"{path}: missing columns {missing}; is it the collection's own file?")
        return list(reader)


def _plain_name(name: str, where: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DatasetError(f"{where}: {name!r} must be a plain file name")
    return name


# NIH ChestX-ray14 ------------------------------------------------------------------------------------------


def _listed(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        raise _fail("nih-cxr14", f"{path} not found: the official split lists sit beside the metadata")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _images_below(folder: Path, suffix: str) -> dict[str, Path]:
    """Every file with `suffix` below `folder` by file name (one walk; names are unique in these sets)."""
    found: dict[str, Path] = {}
    for top, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(suffix):
                found.setdefault(name, Path(top) / name)
    return found


def _nih_films(entries: Path, images: dict[str, Path], frontal_only: bool) -> dict[str, Film]:
    films = {}
    for line, row in enumerate(_read_csv(entries, "nih-cxr14", NIH_COLUMNS), start=2):
        name = _plain_name(row["Image Index"].strip(), f"{entries}:{line}: Image Index")
        if frontal_only and row["View Position"].strip().upper() not in FRONTAL:
            continue
        findings = [x.strip() for x in row["Finding Labels"].split("|") if x.strip() and x.strip() != "No Finding"]
        meta = {"patient_id": row["Patient ID"].strip(), "source": "nih-cxr14", "view": row["View Position"].strip(),
                "orig_width": (row.get("OriginalImage[Width") or "").strip(),  # the header's one column, split by CSV
                "orig_height": (row.get("Height]") or "").strip()}  # fmt: skip
        films[name] = Film(images.get(name, Path()), name, ";".join(sorted(set(findings))), meta)
    return films


def nih_cxr14(folder: Path, out_dir: Path, val: float, seed: int, frontal_only: bool = False) -> str:
    """NIH ChestX-ray14 at `folder` into `out_dir` (see the module's docstring); what was done."""
    entries = next((folder / n for n in NIH_ENTRIES if (folder / n).is_file()), None)
    if entries is None:
        raise _fail("nih-cxr14", f"{folder} has no {' or '.join(NIH_ENTRIES)}; put it at the folder's top level")
    films = _nih_films(entries, _images_below(folder, ".png"), frontal_only)
    test = [films[n] for n in _listed(folder, "test_list.txt") if n in films]
    train_val = [films[n] for n in _listed(folder, "train_val_list.txt") if n in films]
    missing = [f.name for f in test + train_val if not f.source.is_file()]
    if missing:
        raise _fail("nih-cxr14", f"{len(missing)} listed images are not below {folder} (e.g. {missing[0]}); "
                    "unpack every images_*.tar.gz there")  # fmt: skip
    train, held = _carve_by_patient(train_val, val, seed)
    counts = _write_splits(out_dir, {"train": train, "val": held, "test": test}, "nih-cxr14")
    return f"NIH ChestX-ray14 layout: official test list, validation carved by patient (seed {seed}); {counts}"


# CheXpert --------------------------------------------------------------------------------------------------


def _chexpert_labels(row: dict[str, str], policy: str, where: str) -> str:
    labels = []
    for finding in CHEXPERT_FINDINGS:
        value = (row.get(finding) or "").strip()
        code = {"": 0, "0": 0, "0.0": 0, "1": 1, "1.0": 1, "-1": -1, "-1.0": -1}.get(value)
        if code is None:
            raise DatasetError(f"{where}: {finding} is {value!r}; CheXpert codes are 1, 0, -1 (uncertain) or blank")
        if code == 1 or (code == -1 and policy == "u-ones"):
            labels.append(finding)
        elif code == -1 and policy == "ignore":
            labels.append(finding + UNCERTAIN)
    return ";".join(labels)


def _chexpert_films(folder: Path, csv_name: str, policy: str, frontal_only: bool) -> list[Film]:
    columns = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS)
    films = []
    for line, row in enumerate(_read_csv(folder / csv_name, "chexpert", columns), start=2):
        where = f"{folder / csv_name}:{line}"
        published = row["Path"].strip()
        if frontal_only and row["Frontal/Lateral"].strip() != "Frontal":
            continue
        inside = published.split("/", 1)[1] if published.split("/", 1)[0].startswith("CheXpert") else published
        source = confined(folder, inside, f"{where}: Path")
        patient = next((part for part in Path(inside).parts if re.fullmatch(r"patient\d+", part)), None)
        if patient is None:
            raise DatasetError(f"{where}: Path {published!r} names no patientNNNNN folder")
        view = row["AP/PA"].strip() if row["Frontal/Lateral"].strip() == "Frontal" else "Lateral"
        name = inside.split("/", 1)[1] if "/" in inside else inside  # drop train/ or valid/
        meta = {"patient_id": patient, "source": "chexpert", "view": view or row["Frontal/Lateral"].strip()}
        films.append(Film(source, name, _chexpert_labels(row, policy, where), meta))
    return films


def chexpert(folder: Path, out_dir: Path, val: float, seed: int, policy: str, frontal_only: bool = False) -> str:
    """CheXpert at `folder` into `out_dir` (see the module's docstring); what was done."""
    train = _chexpert_films(folder, "train.csv", policy, frontal_only)
    if (folder / "test.csv").is_file():
        held, test = _chexpert_films(folder, "valid.csv", policy, frontal_only), _chexpert_films(
            folder, "test.csv", policy, frontal_only)  # fmt: skip
        how = "test.csv is the test split, valid.csv the validation split"
    else:
        test = _chexpert_films(folder, "valid.csv", policy, frontal_only)
        train, held = _carve_by_patient(train, val, seed)
        how = f"valid.csv is the test split, validation carved from train.csv by patient (seed {seed})"
    missing = [str(f.source) for f in train + held + test if not f.source.is_file()]
    if missing:
        raise _fail("chexpert", f"{len(missing)} films in the csv files are not in {folder} (e.g. {missing[0]})")
    counts = _write_splits(out_dir, {"train": train, "val": held, "test": test}, "chexpert")
    return f"CheXpert layout: {how}; uncertain labels {policy}; {counts}"


# RSNA pneumonia --------------------------------------------------------------------------------------------


def _rsna_files(folder: Path) -> tuple[Path, Path, Path]:
    for stage in ("stage_2", "stage_1"):
        labels, classes = folder / f"{stage}_train_labels.csv", folder / f"{stage}_detailed_class_info.csv"
        if labels.is_file():
            return labels, classes, folder / f"{stage}_train_images"
    raise _fail("rsna-pneumonia", f"{folder} has no stage_2_train_labels.csv (or stage_1_); put the challenge's "
                "files at the folder's top level")  # fmt: skip


def _rsna_films(folder: Path, multiclass: bool) -> list[Film]:
    from cxr.data.dicom import dicom_header

    labels_csv, classes_csv, images = _rsna_files(folder)
    rows = _read_csv(labels_csv, "rsna-pneumonia", ("patientId", "Target"))
    target = {r["patientId"].strip(): r["Target"].strip() for r in rows}  # a film with two boxes has two rows
    rows = _read_csv(classes_csv, "rsna-pneumonia", ("patientId", "class")) if multiclass else []
    detail = {r["patientId"].strip(): r["class"].strip() for r in rows}
    films = []
    for pid in sorted(target):
        source = images / f"{_plain_name(pid, f'{labels_csv}: patientId')}.dcm"
        if not source.is_file():
            raise _fail("rsna-pneumonia", f"{source} not found: unpack {images.name} beside the csv files")
        if multiclass:
            if detail.get(pid) not in RSNA_CLASSES:
                raise _fail("rsna-pneumonia", f"{classes_csv}: {pid} has class {detail.get(pid)!r}, not one of "
                            f"{list(RSNA_CLASSES)}")  # fmt: skip
            label = RSNA_CLASSES[detail[pid]]
        else:
            label = {"1": "pneumonia", "0": "normal"}.get(target[pid])
            if label is None:
                raise _fail("rsna-pneumonia", f"{labels_csv}: {pid} has Target {target[pid]!r}; expected 0 or 1")
        head = dicom_header(source)
        meta = {"patient_id": pid, "source": "rsna-pneumonia", "view": str(getattr(head, "ViewPosition", "")),
                "orig_width": str(getattr(head, "Columns", "")),
                "orig_height": str(getattr(head, "Rows", ""))}  # fmt: skip
        films.append(Film(source, source.name, label, meta))
    return films


def rsna_pneumonia(folder: Path, out_dir: Path, fractions: tuple[float, float], seed: int, multiclass: bool) -> str:
    """The RSNA pneumonia challenge's training part at `folder` into `out_dir`, test and validation carved."""
    val, test = fractions
    films = _rsna_films(folder, multiclass)
    rest, held_test = _carve_by_patient(films, test, seed)
    train, held_val = _carve_by_patient(rest, val / max(1e-9, 1 - test), seed + 1)
    counts = _write_splits(out_dir, {"train": train, "val": held_val, "test": held_test}, "rsna-pneumonia")
    return f"RSNA pneumonia layout: test and validation carved by patient (seed {seed}); {counts}"


# COVIDx ----------------------------------------------------------------------------------------------------


def _covidx_line(line: str, where: str, multiclass: bool) -> tuple[str, str, str, str]:
    """(patient id, file name, class, source) of a COVIDx list line; the label is the last or second-last token."""
    tokens = line.split()
    at = next((i for i in (len(tokens) - 1, len(tokens) - 2) if i >= 2 and tokens[i].lower() in COVIDX_LABELS), None)
    if at is None:
        raise DatasetError(f"{where}: {line!r} is not `patient_id filename label [source]` with a label of "
                           f"{sorted(set(COVIDX_LABELS))}")  # fmt: skip
    label = COVIDX_LABELS[tokens[at].lower()]
    if multiclass and tokens[at].lower() in ("positive", "negative"):
        raise DatasetError(f"{where}: positive/negative lists name two classes; use data.task: binary")
    if not multiclass:
        label = "covid" if label == "covid" else "non-covid"
    name = _plain_name(" ".join(tokens[1:at]), f"{where}: file name")
    return tokens[0], name, label, tokens[at + 1] if at + 1 < len(tokens) else ""


def _covidx_films(folder: Path, split: str, multiclass: bool) -> list[Film]:
    listed = folder / f"{split}.txt"
    films = []
    for n, line in enumerate(listed.read_text().splitlines(), start=1):
        if line.strip():
            patient, name, label, origin = _covidx_line(line, f"{listed}:{n}", multiclass)
            source = folder / split / name
            if not source.is_file():
                raise _fail("covidx", f"{listed}:{n}: {source} not found; unpack the {split}/ images beside it")
            films.append(Film(source, name, label, {"patient_id": patient, "source": origin or "covidx"}))
    return films


def covidx(folder: Path, out_dir: Path, val: float, seed: int, multiclass: bool) -> str:
    """COVIDx CXR at `folder` into `out_dir` (see the module's docstring); what was done."""
    for needed in ("train.txt", "test.txt"):
        if not (folder / needed).is_file():
            raise _fail("covidx", f"{folder / needed} not found: the official split lists sit at the folder's top")
    train, test = _covidx_films(folder, "train", multiclass), _covidx_films(folder, "test", multiclass)
    if (folder / "val.txt").is_file():
        held, how = _covidx_films(folder, "val", multiclass), "official train/val/test lists"
    else:
        train, held = _carve_by_patient(train, val, seed)
        how = f"official train/test lists, validation carved by patient (seed {seed})"
    counts = _write_splits(out_dir, {"train": train, "val": held, "test": test}, "covidx")
    return f"COVIDx layout: {how}; {counts}"


def read_public_layout(data, folder: Path, out_dir: Path, seed: int) -> str:
    """Dispatch on `data.layout` (a DataConfig); what was done."""
    readers: dict[str, Callable[[], str]] = {
        "nih-cxr14": lambda: nih_cxr14(folder, out_dir, data.split.val, seed, data.frontal_only),
        "chexpert": lambda: chexpert(folder, out_dir, data.split.val, seed, data.uncertain, data.frontal_only),
        "rsna-pneumonia": lambda: rsna_pneumonia(folder, out_dir, (data.split.val, data.split.test), seed,
                                                 data.task == "multiclass"),  # fmt: skip
        "covidx": lambda: covidx(folder, out_dir, data.split.val, seed, data.task == "multiclass"),
    }
    return readers[data.layout]()
