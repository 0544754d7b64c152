"""Cross-validation resumes at the fold a killed run was in, and never reuses a fold made differently."""

from __future__ import annotations

import json

import pytest

import cxr.validation.crossval as crossval
from cxr.config import parse_params
from stages.decode import decode
from tests.conftest import tiny_params_dict

REAL_RUN_FOLD = crossval.run_fold


class Killed(Exception):
    pass


def _params(**train):
    raw = tiny_params_dict(**train)
    raw["data"]["folds"] = 3
    return parse_params(raw)


def _counting_folds(monkeypatch, die_at: int | None = None) -> list[int]:
    """Record which folds train; raise Killed when the `die_at`-th fold (0-based call count) starts."""
    calls: list[int] = []

    def run_fold(params, where, raw_dir):
        if die_at is not None and len(calls) == die_at:
            raise Killed(where.name)
        calls.append(int(where.name.removeprefix("fold")))
        return REAL_RUN_FOLD(params, where, raw_dir)

    monkeypatch.setattr(crossval, "run_fold", run_fold)
    return calls


@pytest.fixture
def store(demo_root, tmp_path):
    decoded = tmp_path / "decoded"
    decode(_params(), demo_root, decoded, tmp_path / "no-data.json")
    return decoded


@pytest.mark.slow
def test_a_killed_cross_validation_resumes_at_its_fold_with_the_same_result(demo_root, store, tmp_path, monkeypatch):
    def cv(params, name, kept):
        return crossval.cross_validate(params, demo_root, store, tmp_path / name, tmp_path / f"{name}.json", kept)

    clean = cv(_params(), "clean", None)  # every fold trained, nothing kept
    kept = tmp_path / "kept"
    calls = _counting_folds(monkeypatch, die_at=2)
    with pytest.raises(Killed):
        cv(_params(), "killed", kept)  # folds 0 and 1 finish, fold 2 dies
    assert calls == [0, 1] and sorted(p.name for p in kept.iterdir()) == ["fold0", "fold1"]

    calls = _counting_folds(monkeypatch)
    resumed = cv(_params(resume=True), "resumed", kept)
    assert calls == [2], "only the fold the killed run did not finish trains again"
    assert resumed == clean
    assert json.loads((tmp_path / "resumed.json").read_text()) == clean
    for fold in range(3):  # the fold's files are back where the stage's outs expect them
        assert (tmp_path / f"resumed/fold{fold}/model.pt").is_file()
        assert (tmp_path / f"resumed/fold{fold}/test.json").is_file()

    calls = _counting_folds(monkeypatch)
    cv(_params(), "no_resume", kept)  # without train.resume every fold trains
    assert calls == [0, 1, 2]


@pytest.mark.parametrize("change", ["lr", "evaluate", "code", "images"])
def test_a_kept_fold_made_differently_is_trained_again(demo_root, store, tmp_path, monkeypatch, change):
    kept = tmp_path / "kept"
    _counting_folds(monkeypatch, die_at=1)
    with pytest.raises(Killed):
        crossval.cross_validate(_params(), demo_root, store, tmp_path / "first", tmp_path / "a.json", kept)
    assert (kept / "fold0/signature.json").is_file()

    params = _params(resume=True, lr=0.002 if change == "lr" else 0.01)
    if change == "evaluate":
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"tta": "hflip"})})
    if change == "code":
        monkeypatch.setattr(crossval, "code_digest", lambda: "another version of the code")
    if change == "images":  # e.g. data/raw changed under the same params
        monkeypatch.setattr(crossval, "tree_digest", lambda root: "other images")
    calls = _counting_folds(monkeypatch, die_at=0)
    with pytest.raises(Killed, match="fold0"):
        crossval.cross_validate(params, demo_root, store, tmp_path / "second", tmp_path / "b.json", kept)
    assert calls == []


def test_a_fold_killed_while_being_kept_is_not_reused(demo_root, store, tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    _counting_folds(monkeypatch, die_at=1)
    with pytest.raises(Killed):
        crossval.cross_validate(_params(), demo_root, store, tmp_path / "first", tmp_path / "a.json", kept)
    (kept / "fold0/signature.json").unlink()  # what a kill between the files and the signature leaves
    calls = _counting_folds(monkeypatch, die_at=0)
    with pytest.raises(Killed, match="fold0"):
        crossval.cross_validate(_params(resume=True), demo_root, store, tmp_path / "b", tmp_path / "b.json", kept)
    assert calls == []


@pytest.mark.parametrize("tamper", ["edit test.json", "delete model.pt", "delete test.json"])
def test_a_kept_fold_whose_files_changed_is_trained_again(demo_root, store, tmp_path, monkeypatch, tamper, capsys):
    """Issue 24: kept folds were reused on their signature alone: an edited test.json went into cv.json,
    a fold missing its model.pt left models/cv incomplete. Each kept file's sha256 is checked now."""
    kept = tmp_path / "kept"
    _counting_folds(monkeypatch, die_at=1)
    with pytest.raises(Killed):
        crossval.cross_validate(_params(), demo_root, store, tmp_path / "first", tmp_path / "a.json", kept)
    if tamper == "edit test.json":
        target = kept / "fold0/test.json"
        scores = json.loads(target.read_text())
        target.unlink()  # a hard link to the first run's file: an editor writes a new file
        target.write_text(json.dumps({**scores, "accuracy": 0.99}))
    else:  # a missing test.json was a raw traceback; a missing model.pt left models/cv incomplete
        (kept / "fold0" / tamper.split()[1]).unlink()
    calls = _counting_folds(monkeypatch, die_at=0)
    with pytest.raises(Killed, match="fold0"):
        crossval.cross_validate(_params(resume=True), demo_root, store, tmp_path / "b", tmp_path / "b.json", kept)
    assert calls == [] and "fold 1: kept files changed since they were kept" in capsys.readouterr().out


def _with_sources(demo_root, out, source_of):
    """A copy of the demo's raw splits with a labels.csv per split naming each film's source."""
    import csv
    import shutil

    shutil.copytree(demo_root, out)
    for split_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        files = sorted(split_dir.glob("*/*.png"))
        with (split_dir / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", "patient_id", "source"])
            for i, png in enumerate(files):
                cls = png.parent.name
                writer.writerow([f"{cls}/{png.name}", cls, f"{split_dir.name}-{i}", source_of(cls, i)])
    return out


def test_leave_one_source_out_tests_each_source_on_a_model_that_never_saw_it(demo_root, tmp_path):
    """data.folds: source. Hospital A holds both classes, B only `infected`: B's fold tests B's films,
    A's fold tests A's infected films and reports its normal films as untestable (no other source has
    any), never scoring them against a model that never saw the class."""
    hospital = lambda cls, i: "hospA" if cls == "normal" or i % 2 else "hospB"  # noqa: E731
    raw = _with_sources(demo_root, tmp_path / "sourced", hospital)
    params = parse_params({**tiny_params_dict(), "data": {**tiny_params_dict()["data"], "folds": "source"}})
    decode(params, raw, tmp_path / "decoded", tmp_path / "no-data.json")
    cv = crossval.cross_validate(params, raw, tmp_path / "decoded", tmp_path / "cv", tmp_path / "cv.json")

    assert cv["protocol"] == "leave-one-source-out" and cv["k"] == 2
    a, b = cv["folds"]
    assert (a["source"], b["source"]) == ("hospA", "hospB")
    normal_in_a = sum(1 for p in raw.glob("*/normal/*.png"))
    assert a["untestable"] == {"normal": normal_in_a} and a["classes"] == ["infected"]
    assert b["untestable"] == {} and b["classes"] == ["infected"]
    source = {row.split(",")[0]: row.split(",")[3] for split in ("train", "val", "test")
              for row in (raw / split / "labels.csv").read_text().splitlines()[1:]}  # fmt: skip
    for fold, name in ((0, "hospA"), (1, "hospB")):
        tested = [r.split(",")[0] for r in (tmp_path / f"cv/fold{fold}/predictions.csv").read_text().splitlines()[1:]]
        assert tested and all(source[p.split("/", 1)[1]] == name for p in tested), (name, tested[:3])
        assert len(tested) == cv["folds"][fold]["n"]
    assert cv["accuracy_mean"] == pytest.approx((a["accuracy"] + b["accuracy"]) / 2, abs=1e-6)  # macro over sources
    pooled = cv["pooled"]  # every scored film together: accuracy weighted by films, F1 over the tested classes
    assert pooled["n"] == a["n"] + b["n"] and pooled["classes"] == ["infected"]
    weighted = (a["accuracy"] * a["n"] + b["accuracy"] * b["n"]) / pooled["n"]
    assert pooled["accuracy"] == pytest.approx(weighted, abs=1e-5)
    assert json.loads((tmp_path / "cv.json").read_text()) == cv


def test_leave_one_source_out_names_what_is_missing(demo_root, tmp_path):
    from cxr.data.splits import DatasetError

    raw = _with_sources(demo_root, tmp_path / "sourced", lambda cls, i: "" if i == 3 else "hospA")
    params = parse_params({**tiny_params_dict(), "data": {**tiny_params_dict()["data"], "folds": "source"}})
    decode(params, raw, tmp_path / "decoded", tmp_path / "no-data.json")
    with pytest.raises(DatasetError, match=r"needs a `source` for every image in labels.csv; \d+ have none"):
        crossval.cross_validate(params, raw, tmp_path / "decoded", tmp_path / "cv", tmp_path / "cv.json")
    one = _with_sources(demo_root, tmp_path / "one", lambda cls, i: "hospA")
    decode(params, one, tmp_path / "decoded1", tmp_path / "no-data.json")
    with pytest.raises(DatasetError, match=r"two or more sources in labels.csv; found \['hospA'\]"):
        crossval.cross_validate(params, one, tmp_path / "decoded1", tmp_path / "cv1", tmp_path / "cv1.json")


def test_more_folds_than_images_of_a_class_is_refused_before_any_fold_trains(demo_root, store, tmp_path, monkeypatch):
    """Issue 24: data.folds larger than a class's images trained 7 folds, then died with a raw traceback."""
    from cxr.data.splits import DatasetError

    calls = _counting_folds(monkeypatch)
    raw = tiny_params_dict()
    raw["data"]["folds"] = 30
    says = r"data.folds: 30 folds .* 'infected' has 24, 'normal' has 24; use data.folds: 24"
    with pytest.raises(DatasetError, match=says):
        crossval.cross_validate(parse_params(raw), demo_root, store, tmp_path / "cv", tmp_path / "cv.json")
    assert calls == []
