"""The shortcut audit: near chance where nothing but the lungs tells the classes apart, loud where
file properties do, and on the shared real set it names what separates its sources."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from cxr.config import parse_params
from cxr.data.layout import arrange_splits
from cxr.data.shortcuts import audit, border_fraction
from cxr.data.verify import verify_splits
from stages.verify import verify
from tests.conftest import REPO, tiny_params_dict

SHARED = REPO.parent / "shared" / "real-xray-train"


def test_demo_phantoms_carry_no_shortcut(demo_root):
    found = audit(verify_splits(demo_root).appearance, seed=0)
    assert found["chance"] == 0.5
    assert found["balanced_accuracy"] < 0.7, found  # sizes, format and borders are the same for both classes


def test_a_format_and_size_shortcut_is_named_and_said_loudly(demo_root, tmp_path, capsys):
    for png in sorted(demo_root.rglob("infected/*.png")):  # every infected image: a larger JPEG
        Image.open(png).resize((64, 64)).convert("L").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    params = parse_params(tiny_params_dict())
    shaped = verify(params, demo_root, tmp_path / "data.json", tmp_path / "report.md")
    assert shaped["shortcut"]["balanced_accuracy"] > 0.95
    assert shaped["shortcut"]["most_telling"] in ("width", "height", "format")
    assert json.loads((tmp_path / "data.json").read_text())["shortcut"] == shaped["shortcut"]
    assert "SHORTCUT: the labels can be predicted without looking at the lungs" in capsys.readouterr().out
    assert "**The labels can be predicted without looking at the lungs**" in (tmp_path / "report.md").read_text()
    strict = tiny_params_dict()
    strict["verify"]["on_shortcut"] = "fail"
    with pytest.raises(Exception, match=r"verify.on_shortcut: fail"):
        verify(parse_params(strict), demo_root, tmp_path / "d2.json", tmp_path / "r2.md")


def test_border_fraction_measures_letterbox_bars():
    import numpy as np

    gray = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert border_fraction(gray) == 0.0
    gray[:8] = 0.0
    gray[-8:] = 0.0
    assert border_fraction(gray) == pytest.approx(16 / 64)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/real-xray-train is absent")
def test_the_shared_real_set_is_separable_by_its_sources(tmp_path):
    rows = list(csv.DictReader((SHARED / "MANIFEST.csv").open()))
    folder = tmp_path / "in"
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "source", "orig_width", "orig_height"])
        for r in rows:
            (folder / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SHARED / r["path"], folder / r["path"])
            writer.writerow(
                [r["path"], r["label"], r["patient_id"], r["source_repo"], r["orig_width"], r["orig_height"]]
            )
    out = tmp_path / "raw"
    out.mkdir()
    arrange_splits(folder, out, 0.15, 0.15, seed=42)
    found = audit(verify_splits(out, max_leaks=1000).appearance, seed=42)
    assert found["balanced_accuracy"] > 0.8, found
    # the sources differ most in their original image size (Kermany's pediatric films are large)
    assert found["most_telling"] == "width", found["per_property"]
    # every class now comes from two sources (the adult OpenIST normals joined the pediatric Kermany ones)
    assert set(found["sources"]["normal"]) == {"lecuong1502/BTL_Machine_Learning", "pi-null-mezon/OpenIST"}


def test_attribution_shares_of_grad_cam_maps():
    import torch

    from cxr.evaluate.gradcam import attribution_shares

    centre = torch.zeros(1, 100, 100)
    centre[0, 40:60, 40:60] = 1.0
    frame = torch.zeros(1, 100, 100)
    frame[0, :5, :] = 1.0  # a marker along the top edge
    uniform = torch.ones(1, 100, 100)
    assert attribution_shares(centre)["central_share"] == 1.0 and attribution_shares(centre)["frame_share"] == 0.0
    assert attribution_shares(frame)["frame_share"] == 1.0 and attribution_shares(frame)["central_share"] == 0.0
    even = attribution_shares(uniform)
    assert even["central_share"] == pytest.approx(even["central_area"]) == pytest.approx(0.49)
    assert even["frame_share"] == pytest.approx(even["frame_area"]) == pytest.approx(0.36)
