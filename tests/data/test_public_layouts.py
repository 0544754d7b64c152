"""The public collections read from their own metadata (issue 25, item 2): a fake NIH ChestX-ray14 copy, a few
dozen phantoms with the real metadata files' exact formats, into data/raw's splits."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.config import ConfigError, parse_params
from cxr.data import sources
from cxr.data.phantoms import render_phantom
from cxr.data.public_layouts import CHEXPERT_FINDINGS
from cxr.data.splits import DatasetError, scan_split
from tests.conftest import tiny_params_dict

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
            "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")  # fmt: skip


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]  # fmt: skip


def make_fake_nih(root: Path, n_test: int = 28, n_train_val: int = 56, size: int = 48) -> Path:
    """A folder shaped like the NIH download: Data_Entry_2017.csv (its exact header, `|`-joined findings, `No
    Finding`), the two split lists, and PNGs under images_001/images/. Test film k shows finding k % 14, so every
    finding has positives and negatives in test; a train_val film shows every other finding (even or odd ones), so
    each patient's two films cover all 14 in any split; every 11th has no finding; two films a patient."""
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    rows, test, train_val = [], [], []
    for i in range(n_test + n_train_val):
        name = f"{i // 2:08d}_{i % 2:03d}.png"
        in_test = i < n_test
        findings = [FINDINGS[i % 14]] if in_test else ([] if i % 11 == 0 else list(FINDINGS[i % 2 :: 2]))
        pixels = render_phantom("normal", size, 0.3, np.random.default_rng([7, i]))
        Image.fromarray(pixels, mode="L").save(images / name)
        rows.append([name, "|".join(sorted(set(findings))) or "No Finding", str(i % 2), str(i // 2), "58", "M",
                     "PA" if i % 9 else "AP", "2500", "2048", "0.143", "0.143", ""])  # fmt: skip
        (test if in_test else train_val).append(name)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(NIH_HEADER)
        writer.writerows(rows)
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    return root


def _nih_params(folder: Path, **data):
    raw = tiny_params_dict(loss="bce")
    raw["data"].update(source="folder", folder=str(folder), layout="nih-cxr14", task="multilabel", **data)
    return parse_params(raw)


def test_a_fake_nih_copy_becomes_splits_with_its_findings_patients_and_official_test_list(tmp_path):
    folder = make_fake_nih(tmp_path / "nih")
    out = tmp_path / "raw"
    out.mkdir()
    what = sources.write_dataset(_nih_params(folder).data, 0, out)
    assert "NIH ChestX-ray14 layout" in what and "test 28" in what
    splits = {s: scan_split(out, s, None, multilabel=True) for s in ("train", "val", "test")}
    assert splits["test"].classes == tuple(sorted(FINDINGS))  # 14 findings; "No Finding" is none of them
    assert sorted(p.name for p in splits["test"].files) == (folder / "test_list.txt").read_text().split()
    assert len(splits["train"].files) + len(splits["val"].files) == 56 and splits["val"].files
    assert (splits["train"].labels.sum(1) == 0).any()  # films with no finding: all-zero rows
    patients = {s: {r["patient_id"] for r in csv.DictReader((out / s / "labels.csv").open())} for s in splits}
    assert not patients["train"] & patients["val"] and not patients["test"] & (patients["train"] | patients["val"])
    row = next(csv.DictReader((out / "test" / "labels.csv").open()))
    assert row["source"] == "nih-cxr14" and row["orig_width"] == "2500" and row["view"] in ("PA", "AP")


def test_frontal_only_and_what_is_missing(tmp_path):
    folder = make_fake_nih(tmp_path / "nih")
    out = tmp_path / "raw"
    out.mkdir()
    sources.write_dataset(_nih_params(folder, frontal_only=True).data, 0, out)
    views = {r["view"] for s in ("train", "val", "test") for r in csv.DictReader((out / s / "labels.csv").open())}
    assert views <= {"PA", "AP"}
    (folder / "test_list.txt").unlink()
    with pytest.raises(DatasetError, match=r"test_list.txt not found: the official split lists"):
        sources.write_dataset(_nih_params(folder).data, 0, tmp_path / "again")
    (folder / "test_list.txt").write_text("99999999_000.png\n")
    entries = (folder / "Data_Entry_2017.csv").read_text()
    (folder / "Data_Entry_2017.csv").write_text(entries + "99999999_000.png,Mass,0,99,50,F,PA,1,1,1,1,\n")
    with pytest.raises(DatasetError, match=r"1 listed images are not below .* \(e.g. 99999999_000.png\)"):
        sources.write_dataset(_nih_params(folder).data, 0, tmp_path / "again2")


def test_an_empty_label_is_refused_outside_multilabel(tmp_path, demo_root):
    split = demo_root / "train"
    first = sorted((split / "normal").glob("*.png"))[0].name
    (split / "labels.csv").write_text(f"path,labels\nnormal/{first},\n")
    with pytest.raises(DatasetError, match=r"1 images have no label in labels.csv .* only data.task: multilabel"):
        scan_split(demo_root, "train")


@pytest.mark.parametrize("change", [{"task": "binary"}, {"source": "demo"}])
def test_a_layout_needs_a_folder_and_a_multilabel_task(tmp_path, change):
    raw = tiny_params_dict(loss="bce")
    raw["data"].update(source="folder", folder=str(tmp_path), layout="nih-cxr14", task="multilabel")
    raw["data"].update(change)
    if change.get("task") == "binary":
        raw["train"]["loss"] = "ce"
    with pytest.raises(ConfigError, match=r"layout 'nih-cxr14' (reads the collection from a folder|is read as data)"):
        parse_params(raw)


CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]


def _phantom_file(path: Path, i: int, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_phantom("normal", size, 0.3, np.random.default_rng([11, i])), mode="L").save(path)


def make_fake_chexpert(root: Path, n_train: int = 48, n_valid: int = 28) -> Path:
    """CheXpert-v1.0-small as published: train.csv / valid.csv with `Path` starting at the folder's name,
    observation columns coded 1.0, 0.0, -1.0 or blank, JPEGs under train/patientNNNNN/studyN/. A training
    patient's two films show every other observation (so each patient covers all 14), every third film has its
    next observation uncertain (-1.0), every seventh is lateral; valid film k shows observation k % 14."""
    folder = root / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    for i in range(n_train + n_valid):
        split = "train" if i < n_train else "valid"
        k = i if split == "train" else i - n_train
        patient = f"patient{(i // 2) + (0 if split == 'train' else 64540):05d}"
        lateral = split == "train" and i % 7 == 6
        rel = f"{split}/{patient}/study1/view{i % 2 + 1}_{'lateral' if lateral else 'frontal'}.jpg"
        _phantom_file(folder / rel, i)
        codes = dict.fromkeys(CHEXPERT_FINDINGS, "")
        shown = [CHEXPERT_FINDINGS[k % 14]] if split == "valid" else list(CHEXPERT_FINDINGS[i % 2 :: 2])
        for f in CHEXPERT_FINDINGS:
            codes[f] = "1.0" if f in shown else ("0.0" if i % 2 else "")
        if split == "train" and i % 3 == 0:
            codes[CHEXPERT_FINDINGS[(i + 1) % 14]] = "-1.0"
        rows[split].append([f"CheXpert-v1.0-small/{rel}", "Female", "60", "Lateral" if lateral else "Frontal",
                            "" if lateral else ("AP" if i % 5 else "PA"), *codes.values()])  # fmt: skip
    for split, lines in rows.items():
        with (folder / f"{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([CHEXPERT_HEADER, *lines])
    return folder


def make_fake_rsna(root: Path, n: int = 60) -> Path:
    """The RSNA challenge's training part: stage_2_train_labels.csv (one row per box, empty box fields for none),
    stage_2_detailed_class_info.csv and 12-bit DICOMs named by patientId with ViewPosition in their headers."""
    from tests.data.test_dicom import write_dicom

    (root / "stage_2_train_images").mkdir(parents=True)
    labels, details = [["patientId", "x", "y", "width", "height", "Target"]], [["patientId", "class"]]
    for i in range(n):
        pid = f"{i:08x}-0000-4000-8000-{i:012x}"
        kind = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")[i % 3]
        pixels = render_phantom("normal", 48, 0.3, np.random.default_rng([13, i])).astype(np.uint16) * 16
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pixels, ViewPosition="PA" if i % 2 else "AP")
        boxes = 2 if kind == "Lung Opacity" else 1  # two boxes: two rows for one film
        for _ in range(boxes):
            box = ["264", "152", "213", "379", "1"] if kind == "Lung Opacity" else ["", "", "", "", "0"]
            labels.append([pid, *box])
            details.append([pid, kind])
    for name, rows in (("stage_2_train_labels.csv", labels), ("stage_2_detailed_class_info.csv", details)):
        with (root / name).open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def make_fake_covidx(root: Path, n_train: int = 45, n_test: int = 18, binary: bool = False) -> Path:
    """COVIDx CXR: train.txt / test.txt lines `patient_id filename label source`, images in train/ and test/;
    labels COVID-19 / pneumonia / normal, or positive / negative (CXR-3 on) when `binary`; one file name with a
    space, as a few in the real lists have."""
    names = ("negative", "positive") if binary else ("COVID-19", "pneumonia", "normal")
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        lines = []
        for i in range(count):
            name = f"film {i}.png" if i == 1 else f"{split}-{i:04d}.png"
            _phantom_file(root / split / name, offset + i)
            lines.append(f"P{(offset + i) // 2} {name} {names[i % len(names)]} {('cohen', 'rsna', 'sirm')[i % 3]}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _layout_params(folder: Path, layout: str, task: str, **data):
    raw = tiny_params_dict(loss="bce" if task == "multilabel" else "ce")
    raw["data"].update(source="folder", folder=str(folder), layout=layout, task=task, **data)
    return parse_params(raw)


def _rows(out: Path, split: str) -> list[dict]:
    return list(csv.DictReader((out / split / "labels.csv").open()))


@pytest.mark.parametrize("policy", ["u-ones", "u-zeros", "ignore"])
def test_a_fake_chexpert_copy_follows_the_uncertain_labels_policy(tmp_path, policy):
    folder = make_fake_chexpert(tmp_path / "chexpert")
    out = tmp_path / "raw"
    out.mkdir()
    what = sources.write_dataset(_layout_params(folder, "chexpert", "multilabel", uncertain=policy).data, 0, out)
    assert "valid.csv is the test split" in what and f"uncertain labels {policy}" in what and "test 28" in what
    splits = {s: scan_split(out, s, None, multilabel=True) for s in ("train", "val", "test")}
    assert splits["test"].classes == tuple(sorted(CHEXPERT_FINDINGS))
    train_val = np.concatenate([splits["train"].labels, splits["val"].labels])
    assert len(train_val) == 48 and splits["val"].files
    uncertain = np.isnan(train_val).sum()
    assert (uncertain == 16) if policy == "ignore" else (uncertain == 0)  # every third of 48 films: one -1.0
    assert not np.isnan(splits["test"].labels).any()
    # film 0 shows the even observations and has observation 1 uncertain
    first = next(r for s in ("train", "val") for r in _rows(out, s) if r["path"].endswith("patient00000/study1/view1_"
                                                                                          "frontal.jpg"))  # fmt: skip
    assert ("Enlarged Cardiomediastinum" in first["labels"].split(";")) == (policy == "u-ones")
    assert ("Enlarged Cardiomediastinum?" in first["labels"].split(";")) == (policy == "ignore")
    patients = {s: {r["patient_id"] for r in _rows(out, s)} for s in splits}
    assert not patients["train"] & patients["val"] and not patients["test"] & patients["train"]
    assert {r["view"] for s in splits for r in _rows(out, s)} == {"AP", "PA", "Lateral"}


def test_chexpert_frontal_only_an_official_test_csv_and_bad_codes(tmp_path):
    folder = make_fake_chexpert(tmp_path / "chexpert")
    out = tmp_path / "raw"
    out.mkdir()
    sources.write_dataset(_layout_params(folder, "chexpert", "multilabel", frontal_only=True).data, 0, out)
    assert {r["view"] for s in ("train", "val", "test") for r in _rows(out, s)} <= {"AP", "PA"}
    shutil.copy(folder / "valid.csv", folder / "test.csv")
    out2 = tmp_path / "raw2"
    out2.mkdir()
    what = sources.write_dataset(_layout_params(folder, "chexpert", "multilabel").data, 0, out2)
    assert "test.csv is the test split, valid.csv the validation split" in what and "val 28" in what
    (folder / "train.csv").write_text((folder / "train.csv").read_text().replace(",1.0,", ",2.0,", 1))
    with pytest.raises(DatasetError, match=r"train.csv:2: .* is '2.0'; CheXpert codes are 1, 0, -1"):
        sources.write_dataset(_layout_params(folder, "chexpert", "multilabel").data, 0, tmp_path / "raw3")
    (folder / "train.csv").write_text(f"{','.join(CHEXPERT_HEADER)}\n../../etc/passwd,F,1,Frontal,PA" + "," * 14)
    with pytest.raises(DatasetError, match=r"train.csv:2: Path"):
        sources.write_dataset(_layout_params(folder, "chexpert", "multilabel").data, 0, tmp_path / "raw4")


def test_uncertain_findings_are_left_out_of_the_loss_and_the_scores():
    from cxr.evaluate.scores import multilabel_scores
    from cxr.model.losses import make_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    known = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    unsure = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss = make_loss("bce", 2, uncertain=True)
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, known, reduction="none")
    assert loss(logits, unsure).item() == pytest.approx((per.sum() - per[0, 1]).item() / 3)
    assert loss(logits, known).item() == pytest.approx(make_loss("bce", 2)(logits, known).item())
    probs = np.array([[0.9, 0.8], [0.2, 0.1], [0.7, 0.9], [0.1, 0.3]])
    targets = np.array([[1, np.nan], [0, 0], [1, 1], [0, np.nan]])
    scores = multilabel_scores(targets, probs, ["a", "b"])
    assert scores["per_class"]["b"]["support"] == 1 and scores["per_class"]["b"]["roc_auc"] == 1.0
    assert scores["per_class"]["b"]["confusion_matrix_tn_fp_fn_tp"] == [1, 0, 0, 1]
    assert scores["per_class"]["a"]["confusion_matrix_tn_fp_fn_tp"] == [2, 0, 0, 2]
    assert scores["subset_accuracy"] == 1.0  # rows exact on their known findings


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_fake_rsna_copy_is_carved_by_patient_with_views_from_the_dicom_headers(tmp_path, task):
    folder = make_fake_rsna(tmp_path / "rsna")
    out = tmp_path / "raw"
    out.mkdir()
    what = sources.write_dataset(_layout_params(folder, "rsna-pneumonia", task).data, 0, out)
    assert "RSNA pneumonia layout" in what
    splits = {s: scan_split(out, s, None) for s in ("train", "val", "test")}
    want = ("normal", "pneumonia") if task == "binary" else ("lung_opacity", "normal", "not_normal")
    assert splits["train"].classes == want and sum(len(s.files) for s in splits.values()) == 60  # one row a film
    rows = [r for s in splits for r in _rows(out, s)]
    assert {r["view"] for r in rows} == {"AP", "PA"} and {r["orig_width"] for r in rows} == {"48"}
    assert len({r["patient_id"] for r in rows}) == 60 and all(r["source"] == "rsna-pneumonia" for r in rows)


def test_rsna_names_what_is_missing(tmp_path):
    folder = make_fake_rsna(tmp_path / "rsna", n=6)
    first = sorted((folder / "stage_2_train_images").iterdir())[0]
    first.unlink()
    with pytest.raises(DatasetError, match=rf"{first.name} not found: unpack stage_2_train_images"):
        sources.write_dataset(_layout_params(folder, "rsna-pneumonia", "binary").data, 0, tmp_path / "raw")
    (folder / "stage_2_train_labels.csv").unlink()
    with pytest.raises(DatasetError, match=r"has no stage_2_train_labels.csv"):
        sources.write_dataset(_layout_params(folder, "rsna-pneumonia", "binary").data, 0, tmp_path / "raw2")


@pytest.mark.parametrize("binary", [False, True])
def test_a_fake_covidx_copy_keeps_its_official_lists(tmp_path, binary):
    folder = make_fake_covidx(tmp_path / "covidx", binary=binary)
    out = tmp_path / "raw"
    out.mkdir()
    task = "binary" if binary else "multiclass"
    what = sources.write_dataset(_layout_params(folder, "covidx", task).data, 0, out)
    assert "official train/test lists, validation carved by patient" in what and "test 18" in what
    splits = {s: scan_split(out, s, None) for s in ("train", "val", "test")}
    assert splits["test"].classes == (("covid", "non-covid") if binary else ("covid", "normal", "pneumonia"))
    assert "images/film 1.png" in {r["path"] for r in _rows(out, "train") + _rows(out, "val")}
    assert {r["source"] for r in _rows(out, "test")} == {"cohen", "rsna", "sirm"}
    if binary:
        with pytest.raises(DatasetError, match=r"positive/negative lists name two classes; use data.task: binary"):
            sources.write_dataset(_layout_params(folder, "covidx", "multiclass").data, 0, tmp_path / "raw2")


def test_covidx_uses_an_official_val_list_and_refuses_a_name_outside_its_folder(tmp_path):
    folder = make_fake_covidx(tmp_path / "covidx")
    shutil.copytree(folder / "test", folder / "val")
    shutil.copy(folder / "test.txt", folder / "val.txt")
    out = tmp_path / "raw"
    out.mkdir()
    assert "official train/val/test lists" in sources.write_dataset(
        _layout_params(folder, "covidx", "multiclass").data, 0, out)  # fmt: skip
    (folder / "test.txt").write_text("P1 ../train.txt normal cohen\n")
    with pytest.raises(DatasetError, match=r"test.txt:1: file name: '../train.txt' must be a plain file name"):
        sources.write_dataset(_layout_params(folder, "covidx", "multiclass").data, 0, tmp_path / "raw2")


@pytest.mark.parametrize(("layout", "task"), [("chexpert", "binary"), ("covidx", "multilabel")])
def test_each_layout_names_the_tasks_it_is_read_as(tmp_path, layout, task):
    raw = tiny_params_dict(loss="ce")
    raw["data"].update(source="folder", folder=str(tmp_path), layout=layout, task=task)
    with pytest.raises(ConfigError, match=rf"layout '{layout}' is read as data.task"):
        parse_params(raw)
