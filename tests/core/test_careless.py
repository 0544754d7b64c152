"""Careless data and params that used to give a silent wrong result or a raw traceback (issue 24): each
is now refused by name, with the fix, before anything is trained or written."""

from __future__ import annotations

import csv
import shutil

import pytest

from cxr.config import parse_params
from cxr.data import sources
from cxr.data.archives import ArchiveError
from cxr.data.splits import DatasetError, file_metadata, scan_split
from tests.conftest import tiny_params_dict


def _split_csv(demo_root, rows: list[str]) -> None:
    split = demo_root / "train"
    lines = ["path,labels,orig_width"]
    for cls in ("infected", "normal"):
        lines += [f"{cls}/{p.name},{cls}," for p in sorted((split / cls).glob("*.png"))]
    (split / "labels.csv").write_text("\n".join(lines + rows) + "\n")


def test_a_repeated_row_is_refused_not_trained_twice(demo_root):
    first = sorted((demo_root / "train" / "normal").glob("*.png"))[0].name
    _split_csv(demo_root, [f"normal/{first},normal,"])
    assert len(scan_split(demo_root, "val").files) == 12  # other splits untouched
    with pytest.raises(DatasetError, match=rf"labels.csv:26: {first} already has a row \(line 14\); this row repeats it"):
        scan_split(demo_root, "train")


def test_one_film_with_two_answers_is_refused(demo_root):
    first = sorted((demo_root / "train" / "normal").glob("*.png"))[0].name
    _split_csv(demo_root, [f"./normal/{first},infected,"])  # the same file, spelt another way
    with pytest.raises(DatasetError, match=r"gives it other labels \(infected vs normal\); list all of a film's"):
        scan_split(demo_root, "train")


@pytest.mark.parametrize("width", ["-640", "wide", "0", "1e9"])
def test_a_size_column_must_be_a_size(demo_root, width):
    """A negative orig_width drove a false shortcut warning; a text one was a raw traceback."""
    _split_csv(demo_root, [])
    text = (demo_root / "train" / "labels.csv").read_text().splitlines()
    text[1] += width
    (demo_root / "train" / "labels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=rf"labels.csv:2: orig_width '{width}' is not a size in pixels"):
        scan_split(demo_root, "train")
    with pytest.raises(DatasetError, match="orig_width"):
        file_metadata(demo_root / "train")


def test_a_root_csv_with_a_repeated_file_is_refused_before_splitting(tmp_path, demo_root):
    """Unsplit data: a repeated row could land the same film in train and test."""
    folder = tmp_path / "in"
    folder.mkdir()
    pngs = sorted(demo_root.rglob("*.png"))[:30]
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, png in enumerate(pngs):
            shutil.copy(png, folder / f"{i}.png")
            writer.writerow([f"{i}.png", png.parent.name])
        writer.writerow(["3.png", pngs[3].parent.name])
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(folder))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises((ArchiveError, DatasetError), match=r"labels.csv:32: 3.png already has a row \(line 5\)"):
        sources.write_dataset(parse_params(raw).data, 0, out)
    assert not any(out.rglob("*.png"))
