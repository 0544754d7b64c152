"""Real chest radiographs from ../shared/real-xray-sample (present on developer machines and in
CI; the project's own tests build their own data, so this module is skipped without it)."""

from __future__ import annotations

import csv
import hashlib
import shutil

import pytest
import torch

from cxr.config import parse_params
from cxr.data.decoding import build_store
from cxr.data.sources import write_dataset
from cxr.data.splits import scan_split
from cxr.data.store import SplitStore
from cxr.data.verify import verify_splits
from tests.conftest import REPO, tiny_params_dict

SAMPLE = REPO.parent / "shared" / "real-xray-sample"
pytestmark = pytest.mark.skipif(not (SAMPLE / "MANIFEST.csv").is_file(), reason="../shared/real-xray-sample absent")


def test_real_files_go_through_folder_source_verify_and_decoding(tmp_path):
    rows = list(csv.DictReader((SAMPLE / "MANIFEST.csv").open()))
    layout = tmp_path / "xrays"
    placed = {}
    for cls in ("covid", "normal"):
        for i, row in enumerate(r for r in rows if r["class"] == cls):
            path = SAMPLE / row["path"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], row["path"]
            split = ("TRAIN", "Validation", "test")[i % 3]  # split names as real archives spell them
            (layout / split / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, layout / split / cls / path.name)
            placed[cls] = placed.get(cls, 0) + 1
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(layout))
    out = tmp_path / "raw"
    out.mkdir()
    write_dataset(parse_params(raw).data, 0, out)
    counts = verify_splits(out).counts
    assert sum(c["covid"] for c in counts.values()) == placed["covid"] == 95
    assert sum(c["normal"] for c in counts.values()) == placed["normal"] == 3
    split = scan_split(out, "train")
    build_store(out, tmp_path / "decoded", 64, multilabel=False)
    pixels = SplitStore(tmp_path / "decoded", "train")[range(len(split.files))]
    assert pixels.shape == (len(split.files), 1, 64, 64) and pixels.dtype == torch.uint8  # one channel
    assert pixels.float().std() > 10  # real content, not blank frames
