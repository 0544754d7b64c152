"""The public collections read from their own metadata (issue 25, item 2): a fake NIH ChestX-ray14 copy, a few
dozen phantoms with the real metadata files' exact formats, into data/raw's splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.config import ConfigError, parse_params
from cxr.data import sources
from cxr.data.phantoms import render_phantom
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
    with pytest.raises(ConfigError, match=r"layout 'nih-cxr14' reads the collection from a folder .*data.source"):
        parse_params(raw)
