"""The seeds' own layouts: the course's Part 2 archive (Train + Validation + an unlabeled Test
folder) and train + test only sets run end to end, with the carved split and a submission file."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import zipfile

from cxr.config import parse_params
from cxr.data import sources
from cxr.data.demo import write_demo_dataset
from cxr.data.verify import verify_splits
from cxr.evaluate.doubt import DOUBT_COLUMNS
from cxr.evaluate.run import evaluate
from tests.conftest import tiny_params_dict, train_on
from tests.data.test_sources import in_tmp, server  # noqa: F401 - fixtures

CLASSES = ("covid", "pneumonia", "normal")


def _part2_zip(root) -> tuple[bytes, int]:
    """Part 2's shape: Train/ and Validation/ with covid-19, normal, pneumonia folders, and Test/
    holding unlabeled images directly (the hand-in set)."""
    buffer, unlabeled = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(root.rglob("*.png")):
            split, cls = path.parent.parent.name, path.parent.name
            folder = {"covid": "covid-19"}.get(cls, cls)
            if split == "test":
                zf.write(path, f"part2/Test/img_{unlabeled:04d}.png")
                unlabeled += 1
            else:
                zf.write(path, f"part2/{'Train' if split == 'train' else 'Validation'}/{folder}/{path.name}")
    return buffer.getvalue(), unlabeled


def _multiclass(**data):
    raw = tiny_params_dict(epochs=1)
    raw["data"].update(task="multiclass", **data)
    return raw


def test_part2_archive_carves_test_out_of_train_and_writes_a_submission(server, in_tmp):  # noqa: F811
    demo = parse_params(_multiclass())
    write_demo_dataset(in_tmp / "demo", demo.data, 0)
    body, unlabeled = _part2_zip(in_tmp / "demo")
    server.files["part2.zip"] = body
    raw = _multiclass(source="url", url=server.url("part2.zip"), sha256=hashlib.sha256(body).hexdigest())
    params = parse_params(raw)
    out = in_tmp / "raw"
    out.mkdir()
    what = sources.write_dataset(params.data, 0, out)
    assert "unlabeled/" in what and "test carved out of train" in what
    counts = verify_splits(out).counts
    assert sum(counts["test"].values()) > 0 and set(counts["test"]) == {"covid-19", "normal", "pneumonia"}
    assert sum(counts["train"].values()) + sum(counts["test"].values()) == 36  # 12 per class
    assert len(list((out / "unlabeled").glob("*.png"))) == unlabeled == 18

    train_on(params, out, in_tmp)
    submission = in_tmp / "submission.csv"
    scores = evaluate(params, in_tmp / "models/model.pt", in_tmp / "data/decoded", out, in_tmp / "t.json",
                      in_tmp / "p.csv", in_tmp / "eval", submission)  # fmt: skip
    rows = list(csv.DictReader(submission.open()))
    assert scores["submission_rows"] == len(rows) == 18
    assert set(rows[0]) == {"file", "label", "p_covid-19", "p_normal", "p_pneumonia", *DOUBT_COLUMNS}
    assert {r["label"] for r in rows} <= {"covid-19", "normal", "pneumonia"}


def test_train_and_test_only_carves_val(tmp_path):
    demo = parse_params(_multiclass())
    write_demo_dataset(tmp_path / "demo", demo.data, 0)
    shutil.rmtree(tmp_path / "demo" / "val")
    params = parse_params(_multiclass(source="folder", folder=str(tmp_path / "demo")))
    out = tmp_path / "raw"
    out.mkdir()
    assert "val carved out of train" in sources.write_dataset(params.data, 0, out)
    counts = verify_splits(out).counts  # would raise on a leak between the carved split and train
    assert counts["test"] == {c: 6 for c in sorted(CLASSES)}
    assert sum(counts["val"].values()) == round(12 * 0.15) * 3 and all(n > 0 for n in counts["val"].values())
    assert not (out / "unlabeled").exists()
    submission = tmp_path / "s.csv"
    train_on(params, out, tmp_path)
    evaluate(params, tmp_path / "models/model.pt", tmp_path / "data/decoded", out, tmp_path / "t.json",
             tmp_path / "p.csv", tmp_path / "eval", submission)  # fmt: skip
    header = ",".join(["file", "label", "p_covid", "p_normal", "p_pneumonia", *DOUBT_COLUMNS])
    assert submission.read_text().splitlines() == [header]


def test_val_and_test_both_unlabeled_go_to_their_own_folders(tmp_path):
    """Issue 24: val/ and test/ both flat folders of unlabeled images was a raw traceback (both were
    copied to unlabeled/); each is now a sub-folder of unlabeled/ and train is carved for val and test."""
    demo = parse_params(_multiclass())
    write_demo_dataset(tmp_path / "demo", demo.data, 0)
    for split in ("val", "test"):
        for png in sorted((tmp_path / "demo" / split).rglob("*.png")):
            png.rename(tmp_path / "demo" / split / f"{png.parent.name}_{png.name}")
        for cls in sorted(CLASSES):
            (tmp_path / "demo" / split / cls).rmdir()
    params = parse_params(_multiclass(source="folder", folder=str(tmp_path / "demo")))
    out = tmp_path / "raw"
    out.mkdir()
    what = sources.write_dataset(params.data, 0, out)
    assert "unlabeled/" in what and "val carved out of train" in what and "test carved out of train" in what
    assert {p.name for p in (out / "unlabeled").iterdir()} == {"val", "test"}
    assert len(list((out / "unlabeled" / "test").glob("*.png"))) == 18
