"""Stage export (issue 13): ONNX and torch.export (.pt2) files that give the checkpoint's logits on the test
images (onnxruntime, max abs difference < 1e-4), refused when they do not, and the model card."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.data.store import SplitStore
from cxr.evaluate.card import model_card
from cxr.model.checkpoint import load_checkpoint
from cxr.model.export import ExportError, export
from cxr.model.inference import Runtime
from tests.conftest import tiny_params_dict, train_on


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    params = parse_params(tiny_params_dict())
    write_demo_dataset(work / "raw", params.data, params.seed)
    train_on(params, work / "raw", work)
    model, spec, _ = load_checkpoint(work / "models/model.pt")
    test = SplitStore(work / "data/decoded", "test", spec.image_size)
    return params, model, spec, test[list(range(len(test)))], work


def test_onnx_and_pt2_give_the_checkpoints_logits(trained, tmp_path):
    params, model, spec, pixels, _ = trained
    result = export(model, spec, pixels, tmp_path)
    assert result["images"] == len(pixels) == 12
    assert result["onnx_max_abs_diff"] < 1e-4 and result["pt2_max_abs_diff"] < 1e-4 and result["max_abs_logit"] > 0
    # independently of the stage: onnxruntime on the file vs the pipeline's own inference path
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"pixels": pixels.float().numpy()})[0]
    with torch.no_grad():
        reference = model(Runtime(torch.device("cpu"), None).images(pixels)).numpy()
    assert np.abs(onnx_logits - reference).max() < 1e-4
    one = session.run(["logits"], {"pixels": pixels[:1].float().numpy()})[0]  # the batch size is free
    assert one.shape == (1, len(spec.classes))


def test_an_export_that_disagrees_is_refused_and_removed(trained, tmp_path, monkeypatch):
    import cxr.model.export as exporting

    _, model, spec, pixels, _ = trained
    monkeypatch.setattr(exporting, "MAX_ABS_DIFF", -1.0)
    with pytest.raises(ExportError, match="differ from the checkpoint"):
        export(model, spec, pixels, tmp_path)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.pt2").exists()


def test_the_model_card_states_data_results_audit_and_limits(trained):
    params, _, spec, _, work = trained
    data = {"train": {"total": 24, "infected": 12, "normal": 12}, "shortcut": {"balanced_accuracy": 0.53,
            "chance": 0.5, "most_telling": "spread"}}  # fmt: skip
    test = {"n": 12, "accuracy": 0.75, "f1_macro": 0.74, "threshold_rule": "0.5", "checkpoint_epoch": 2,
            "screening": {"infected": {"threshold": 0.5, "sensitivity": 1.0, "sensitivity_ci95_low": 0.541,
                                       "sensitivity_ci95_high": 1.0, "specificity": 0.5, "ppv": 0.667, "npv": 1.0,
                                       "roc_auc": 0.9, "ece": 0.1}},
            "attribution": {"layer": "layer2", "central_share": 0.6}}  # fmt: skip
    card = model_card(params, spec, data, test, {"images": 12, "onnx_max_abs_diff": 2e-6})
    assert "Not for clinical use" in card
    assert "| train | 24 | infected 12, normal 12 |" in card
    assert "| infected | 0.500 | 1.000 [0.541, 1.000] | 0.500 |" in card
    assert "balanced accuracy 0.530" in card and "`spread`" in card and "`layer2`" in card
    assert "accuracy 0.750" in card and f"classes {', '.join(spec.classes)}" in card


def test_the_card_has_the_nine_sections_a_metadata_header_and_cv_and_external_results(trained):
    """Issue 23, item 9: Mitchell et al.'s nine sections in the Hugging Face template's order, its YAML
    metadata header, cross-validation and external results when they exist, and the audit placed where the
    caveats say it is (above)."""
    import yaml

    params, _, spec, _, _ = trained
    test = {"n": 12, "accuracy": 0.75, "f1_macro": 0.7412345, "model_sha256": "ab" * 32}
    cv = {"k": 2, "protocol": "leave-one-source-out", "pool": "train+val+test", "accuracy_mean": 0.6,
          "accuracy_std": 0.1, "f1_macro_mean": 0.55, "f1_macro_std": 0.05, "pooled": {"n": 30, "accuracy": 0.61},
          "folds": [{"fold": 0, "source": "hannover", "n": 10, "accuracy": 0.5, "f1_macro": 0.4},
                    {"fold": 1, "source": "kermany", "n": 20, "accuracy": 0.7, "f1_macro": 0.7}]}  # fmt: skip
    external = {"ieee": {"n": 40, "accuracy": 0.65, "f1_macro": 0.6, "folder": "/x", "leaks_excluded": 2,
                         "abstention": {"flagged_share": 0.25}}}  # fmt: skip
    card = model_card(params, spec, {}, test, {"images": 12}, cv, external)
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] and header["library_name"] == "pytorch" and header["pipeline_tag"].startswith("image")
    results = header["model-index"][0]["results"]
    assert results[0]["metrics"][1]["value"] == 0.7412 and results[1]["dataset"]["name"] == "ieee"
    sections = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    nine = ["Model details", "Intended use", "Factors", "Metrics", "Training data", "Evaluation data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]  # fmt: skip
    found = [next(i for i, s in enumerate(sections) if s.startswith(name)) for name in nine]
    assert found == sorted(found), sections
    assert "| hannover | 10 | 0.500 | 0.400 |" in card and "leave-one-source-out, 2 folds" in card
    assert "| ieee | 40 | 0.650 | 0.600 | 0.250 |" in card and "External set `ieee`: 40 films" in card
    assert sections.index("Shortcut audit") < sections.index("Caveats and recommendations")
    assert "shortcut audit above" in card and "below" not in card and "ab" * 32 in card


def test_a_one_image_test_split_still_exports_a_free_batch_size(trained, tmp_path):
    _, model, spec, pixels, _ = trained
    assert export(model, spec, pixels[:1], tmp_path)["images"] == 1
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"pixels": pixels[:3].float().numpy()})[0].shape == (3, len(spec.classes))
    with pytest.raises(ExportError, match="no images"):
        export(model, spec, pixels[:0], tmp_path / "none")


def test_the_onnx_file_says_what_it_needs_and_is_readable_as_the_umask_allows(trained, tmp_path):
    """Issue 23, item 9: class order, threshold, input size, channels, normalisation and the checkpoint's
    sha256 in the ONNX metadata; exported files 0644 under umask 022 (not mkstemp's 0600)."""
    import json
    import os
    import stat

    import onnx

    from cxr.atomic import UMASK
    from cxr.model.export import onnx_metadata

    _, model, spec, pixels, _ = trained
    decisions = {"screening": {"infected": {"threshold": 0.37}}, "abstention": {"coverage": 0.95}}
    export(model, spec, pixels, tmp_path, onnx_metadata(spec, "ab" * 32, decisions))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(props["classes"]) == list(spec.classes) and props["task"] == spec.task
    assert json.loads(props["thresholds"]) == {"infected": 0.37} and props["checkpoint_sha256"] == "ab" * 32
    assert props["image_size"] == str(spec.image_size) and props["channels"] == "1"
    assert json.loads(props["mean"]) == list(spec.mean) and props["preprocessing"] == spec.preprocessing
    for name in ("model.onnx", "model.pt2"):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o666 & ~UMASK, oct(mode)
        assert UMASK & 0o044 or mode & 0o044  # readable by group and others wherever the umask allows
