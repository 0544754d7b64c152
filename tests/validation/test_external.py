"""External validation: another folder scored with the fitted thresholds, training repeats left out."""

from __future__ import annotations

import json
import shutil

import pytest

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.data.splits import DatasetError
from cxr.evaluate.run import evaluate
from cxr.validation.external import validate_externally
from tests.conftest import tiny_params_dict, train_on


def test_an_external_folder_is_scored_without_the_training_images_it_repeats(tmp_path, demo_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tiny_params_dict(epochs=1)
    params = parse_params(raw)
    train_on(params, demo_root, tmp_path)
    model, metrics = tmp_path / "models/model.pt", tmp_path / "test.json"
    evaluate(params, model, tmp_path / "data/decoded", demo_root, metrics, tmp_path / "p.csv", tmp_path / "eval")

    other = parse_params({**raw, "data": {**raw["data"], "demo": {**raw["data"]["demo"], "test_per_class": 5}}})
    write_demo_dataset(tmp_path / "other", other.data, seed=7)  # another hospital: another seed
    external = tmp_path / "other" / "test"
    shutil.copy(next((demo_root / "train" / "normal").glob("*.png")), external / "normal" / "copied.png")
    raw["evaluate"]["external"] = {"seed7": str(external)}
    results = validate_externally(
        parse_params(raw), model, metrics, demo_root, tmp_path / "external.json", tmp_path / "ext"
    )
    scores = results["seed7"]
    assert scores["leaks_excluded"] == 1 and scores["n"] == 10  # 11 files, the training copy left out
    assert 0.0 <= scores["accuracy"] <= 1.0 and set(scores["per_class"]) == {"infected", "normal"}
    assert json.loads((tmp_path / "external.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "ext/plots/sklearn/confusion/seed7.json").is_file()
    assert (tmp_path / "ext/plots/sklearn/roc/seed7/infected.json").is_file()

    raw["evaluate"]["external"] = {"bad": str(tmp_path / "nowhere")}
    with pytest.raises(DatasetError, match="nowhere is not a folder"):
        validate_externally(parse_params(raw), model, metrics, demo_root, tmp_path / "e2.json", tmp_path / "e2")

    # issue 24: an unreadable image is named, not silently dropped
    (external / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    raw["evaluate"]["external"] = {"seed7": str(external)}
    results = validate_externally(parse_params(raw), model, metrics, demo_root, tmp_path / "e3.json", tmp_path / "e3")
    assert results["seed7"]["unreadable"] == 1 and results["seed7"]["n"] == 10
    assert [u["path"] for u in results["seed7"]["unreadable_files"]] == [str(external / "normal" / "broken.png")]
    # the training split itself: nothing left to validate on, said plainly (was a raw traceback)
    raw["evaluate"]["external"] = {"self": str(demo_root / "train")}
    with pytest.raises(DatasetError, match=r"evaluate.external.self: all 24 images .* repeat training images"):
        validate_externally(parse_params(raw), model, metrics, demo_root, tmp_path / "e4.json", tmp_path / "e4")
    # an empty set
    for cls in ("infected", "normal"):
        (tmp_path / "empty" / cls).mkdir(parents=True)
    raw["evaluate"]["external"] = {"empty": str(tmp_path / "empty")}
    with pytest.raises(DatasetError, match=r"evaluate.external.empty: .*empty holds no images"):
        validate_externally(parse_params(raw), model, metrics, demo_root, tmp_path / "e5.json", tmp_path / "e5")


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_an_external_set_name_is_a_plain_file_name(name):
    """An external set named `..` put its ROC files outside metrics/external/roc/ (issue 24)."""
    raw = tiny_params_dict()
    raw["evaluate"]["external"] = {name: "/tmp"}
    with pytest.raises(Exception, match="evaluate.external"):
        parse_params(raw)
