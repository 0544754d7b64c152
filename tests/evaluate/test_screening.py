"""Screening metrics, thresholds fitted on validation, bootstrap intervals, calibration,
Grad-CAM and prediction on new files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

from cxr.config import ConfigError, parse_params
from cxr.data.demo import write_demo_dataset
from cxr.data.download import sha256_of
from cxr.data.radiograph import BASE as PREPROCESSING
from cxr.evaluate.gradcam import gradcam
from cxr.evaluate.run import evaluate
from cxr.evaluate.screening import (
    ThresholdRule,
    at_decisions,
    bootstrap,
    exact_interval,
    operating_points,
    proportion_intervals,
    ranking,
    reliability,
    weighted_ranking,
)
from cxr.model.checkpoint import save_checkpoint
from cxr.model.inference import IMAGENET_MEAN, IMAGENET_STD
from cxr.model.spec import ModelSpec
from stages import predict
from tests.conftest import tiny_params_dict, train_on


def _scores(n: int, seed: int, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * truth - 1))))
    return truth, scores


def test_screening_metrics_match_scikit_learn():
    truth, scores = _scores(300, 0)
    pred = scores >= 0.45
    got = {**at_decisions(truth, pred), **ranking(truth, scores)}
    assert got["sensitivity"] == pytest.approx(recall_score(truth, pred))
    assert got["specificity"] == pytest.approx(recall_score(~truth, ~pred))
    assert got["ppv"] == pytest.approx(precision_score(truth, pred))
    assert got["npv"] == pytest.approx(precision_score(~truth, ~pred))
    assert got["f1"] == pytest.approx(f1_score(truth, pred))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert got["pr_auc"] == pytest.approx(average_precision_score(truth, scores))
    assert np.isnan(at_decisions(np.zeros(5, bool), np.zeros(5, bool))["sensitivity"])  # no positives


def test_threshold_rules_pick_what_they_promise():
    truth, scores = _scores(400, 1)
    assert ThresholdRule(0.3).fit(truth, scores) == 0.3
    youden = ThresholdRule("youden").fit(truth, scores)

    def j(t):
        m = at_decisions(truth, scores >= t)
        return m["sensitivity"] + m["specificity"] - 1

    assert j(youden) == pytest.approx(max(j(t) for t in np.unique(scores)))
    t = ThresholdRule("sensitivity:0.9").fit(truth, scores)
    assert at_decisions(truth, scores >= t)["sensitivity"] >= 0.9
    higher = np.unique(scores[scores > t])[0]  # the next stricter threshold misses the target
    assert at_decisions(truth, scores >= higher)["sensitivity"] < 0.9
    for bad in ("sensitivity:1.5", "best", 1.0, 0.0):
        with pytest.raises(ValueError):
            ThresholdRule(bad)
    raw = tiny_params_dict()
    raw["evaluate"]["threshold"] = "youdens"
    with pytest.raises(ConfigError, match=r"evaluate.threshold: 'youdens' is not valid: .*'sensitivity:0.95'"):
        parse_params(raw)


def test_threshold_is_fitted_on_validation_only():
    classes = ("infected", "normal")
    val_truth, val_scores = _scores(200, 2)
    val_labels = np.where(val_truth, 0, 1)
    val_probs = np.stack([val_scores, 1 - val_scores], 1)
    _, test_scores = _scores(150, 3)
    test_probs = np.stack([test_scores, 1 - test_scores], 1)
    rule = ThresholdRule("youden")
    preds, thresholds = operating_points(classes, False, val_labels, val_probs, test_probs, rule)
    assert thresholds == {"infected": rule.fit(val_truth, val_scores)}
    assert np.array_equal(preds, np.where(test_scores >= thresholds["infected"], 0, 1))
    other_test = np.roll(test_probs, 7, axis=0)  # other test data: same threshold
    assert operating_points(classes, False, val_labels, val_probs, other_test, rule)[1] == thresholds
    other_val = np.roll(val_probs, 7, axis=0)  # other validation data: another threshold
    assert operating_points(classes, False, val_labels, other_val, test_probs, rule)[1] != thresholds
    # multi-label: one threshold per class, each from its own validation column
    ml_val = np.stack([val_truth, ~val_truth], 1).astype(np.float32)
    preds, per_class = operating_points(classes, True, ml_val, val_probs, test_probs, rule)
    assert per_class["normal"] == rule.fit(~val_truth, 1 - val_scores) and preds.shape == test_probs.shape


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (150, 3000):
        truth, scores = _scores(n, 4)
        pred = scores >= 0.5
        point = {**at_decisions(truth, pred), **ranking(truth, scores)}
        ci = bootstrap(truth, scores, pred, resamples=300, seed=0)
        assert set(ci) == {"f1", "roc_auc", "pr_auc"}  # proportions get exact intervals instead
        for key, (low, high) in ci.items():
            assert low <= point[key] <= high, (n, key)
        widths.append(ci["f1"][1] - ci["f1"][0])
        assert bootstrap(truth, scores, pred, resamples=300, seed=0) == ci  # seeded
    assert widths[1] < widths[0] / 2


def test_bootstrap_in_blocks_of_resamples_gives_the_one_pass_intervals(monkeypatch):
    """The resamples go through the ranking 100 at a time (memory: a block x the images); the intervals are
    those of one pass over all of them."""
    import cxr.evaluate.screening as screening

    truth, scores = _scores(400, 5)
    blocks = bootstrap(truth, scores, scores >= 0.5, resamples=250, seed=3)
    monkeypatch.setattr(screening, "RESAMPLE_BLOCK", 10_000)
    assert bootstrap(truth, scores, scores >= 0.5, resamples=250, seed=3) == blocks


def test_exact_intervals_of_proportions():
    """Clopper-Pearson: 100/100 is [0.025 ** (1/100), 1] = [0.9637, 1], not a bootstrap's [1, 1];
    0/20 mirrors it; 50/100 is the textbook [0.3983, 0.6017]."""
    assert exact_interval(100, 100) == pytest.approx([0.025 ** (1 / 100), 1.0])
    assert exact_interval(100, 100)[0] == pytest.approx(0.9637, abs=1e-4)
    assert exact_interval(0, 20) == pytest.approx([0.0, 1 - 0.025 ** (1 / 20)])
    assert exact_interval(50, 100) == pytest.approx([0.3983, 0.6017], abs=1e-4)
    assert exact_interval(0, 0) == []
    truth = np.array([1] * 100 + [0] * 50, bool)
    pred = np.array([1] * 100 + [0] * 45 + [1] * 5, bool)  # every positive found, 5 false alarms
    ci = proportion_intervals(truth, pred)
    assert ci["sensitivity"] == pytest.approx(exact_interval(100, 100))
    assert ci["specificity"] == pytest.approx(exact_interval(45, 50))
    assert ci["ppv"] == pytest.approx(exact_interval(100, 105)) and ci["npv"] == pytest.approx([0.9213, 1.0], abs=1e-4)


def test_vectorised_resampled_aucs_match_scikit_learn_with_sample_weights():
    truth, scores = _scores(120, 6)
    scores = np.round(scores, 2)  # ties, which both AUCs must count as scikit-learn does
    weights = np.random.default_rng(1).multinomial(120, np.full(120, 1 / 120), size=25).astype(float)
    got = weighted_ranking(truth, scores, weights)
    for b, w in enumerate(weights):
        assert got["roc_auc"][b] == pytest.approx(roc_auc_score(truth, scores, sample_weight=w))
        assert got["pr_auc"][b] == pytest.approx(average_precision_score(truth, scores, sample_weight=w))
    only_negatives = np.where(truth, 0.0, 1.0)[None, :]
    assert np.isnan(weighted_ranking(truth, scores, only_negatives)["roc_auc"]).all()


def test_expected_calibration_error():
    rng = np.random.default_rng(5)
    p = rng.random(50_000)
    calibrated = rng.random(50_000) < p
    assert reliability(calibrated, p, 10)[0] < 0.01
    overconfident = np.clip((p - 0.5) * 3 + 0.5, 0, 1)
    assert reliability(calibrated, overconfident, 10)[0] > 0.1
    # by hand: two bins, |0.2 - 0.5| * 2/4 + |0.9 - 1.0| * 2/4 = 0.2
    ece, table = reliability(np.array([0, 1, 1, 1]), np.array([0.2, 0.2, 0.9, 0.9]), 2)
    assert ece == pytest.approx(0.2) and [b["count"] for b in table] == [2, 2]


def test_gradcam_matches_a_hand_computation_and_finds_the_evidence():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    x = torch.randn(2, 3, 16, 16)
    cams = gradcam(model, x, torch.tensor([0, 1]), "1")
    feats = model[1](model[0](x)).detach().requires_grad_(True)
    logits = model[4](model[3](model[2](feats)))
    grads = torch.autograd.grad(logits[0, 0] + logits[1, 1], feats)[0]
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * feats).sum(1))
    expected = expected / expected.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(cams, expected.detach(), atol=1e-5)
    # evidence only in the left half: the map is zero on the right
    bright = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        bright[0].weight.fill_(1.0), bright[0].bias.zero_(), bright[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.zeros(1, 3, 16, 16)
    x[..., :8] = 1.0
    cam = gradcam(bright, x, torch.tensor([0]), "1")[0]
    assert cam[:, :6].min() > 0.9 and cam[:, 10:].max() < 1e-6


def _checkpoint(tmp_path):
    spec = ModelSpec(
        "resnet18",
        ("infected", "normal"),
        "binary",
        "ce",
        (8,),
        0.0,
        "relu",
        False,
        32,
        IMAGENET_MEAN,
        IMAGENET_STD,
        PREPROCESSING,
    )
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, spec.build(), spec, epoch=1)
    return path


def test_predict_names_bad_inputs_and_predicts_the_rest(tmp_path, capsys, monkeypatch):
    model = _checkpoint(tmp_path)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.new("L", (40, 30), 120).save(folder / "a.png")
    Image.new("RGBA", (50, 50), (10, 200, 30, 255)).save(folder / "sub" / "b.png")
    Image.new("I;16", (20, 20), 3000).save(folder / "c16.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("hello")
    status = predict.run(
        [str(folder), str(tmp_path / "missing.png"), "--model", str(model), "--metrics", str(tmp_path / "none.json")]
    )
    out, err = capsys.readouterr()
    rows = out.strip().splitlines()
    assert status == 1 and rows[0].startswith("path,p_infected,p_normal,decision,ood_score,") and len(rows) == 4
    assert {r.split(",")[0].rsplit("/", 1)[1] for r in rows[1:]} == {"a.png", "b.png", "c16.png"}
    for name in ("broken.jpg", "notes.txt", "missing.png"):
        assert name in err, name
    for row in rows[1:]:
        p_inf, p_norm = map(float, row.split(",")[1:3])
        assert p_inf + p_norm == pytest.approx(1.0, abs=1e-5)
        assert row.split(",")[3] == ("infected" if p_inf >= 0.5 else "normal")
    # flat test images: every one abstains, by the model-free checks (no fitted rule without evaluate's metrics)
    assert all(",yes,not a radiograph: a blank or near-constant frame" in row for row in rows[1:] if "/a.png" in row)
    assert "threshold infected 0.500 (default)" in err
    monkeypatch.setattr(predict, "IMAGES_PER_PASS", 1)  # one image per chunk: the same rows, the same problems
    assert (
        predict.run(
            [
                str(folder),
                str(tmp_path / "missing.png"),
                "--model",
                str(model),
                "--metrics",
                str(tmp_path / "none.json"),
            ]
        )
        == 1
    )
    again, err_again = capsys.readouterr()
    assert again == out and err_again == err


def test_predict_uses_the_threshold_evaluate_fitted_for_this_model(tmp_path, capsys):
    model = _checkpoint(tmp_path)
    Image.new("L", (40, 40), 90).save(tmp_path / "x.png")
    metrics = tmp_path / "test.json"
    fitted = {"screening": {"infected": {"threshold": 0.0001}}}
    metrics.write_text(json.dumps({"model_sha256": sha256_of(model), **fitted}))
    assert (
        predict.run(
            [
                str(tmp_path / "x.png"),
                "--model",
                str(model),
                "--metrics",
                str(metrics),
                "--out",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["decision"] == "infected" and set(rows[0]["probabilities"]) == {"infected", "normal"}
    assert "threshold infected 0.000 (fitted by evaluate" in capsys.readouterr().err
    metrics.write_text(json.dumps({"model_sha256": "another model", **fitted}))
    predict.run([str(tmp_path / "x.png"), "--model", str(model), "--metrics", str(metrics)])
    assert "(default)" in capsys.readouterr().err


@pytest.mark.parametrize("task, loss", [("multilabel", "bce"), ("multiclass", "ce")])
def test_evaluate_reports_every_class_of_three_class_tasks(tmp_path, task, loss):
    raw = tiny_params_dict(loss=loss, epochs=1)
    raw["data"]["task"] = task
    raw["evaluate"].update(threshold="youden", bootstrap=50)
    params = parse_params(raw)
    write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    train_on(params, tmp_path / "raw", tmp_path)
    scores = evaluate(
        params,
        tmp_path / "models/model.pt",
        tmp_path / "data/decoded",
        tmp_path / "raw",
        tmp_path / "test.json",
        tmp_path / "predictions.csv",
        tmp_path / "eval",
    )
    assert set(scores["screening"]) == {"covid", "pneumonia", "normal"}
    for report in scores["screening"].values():
        assert report["sensitivity_ci95_low"] <= report["sensitivity"] <= report["sensitivity_ci95_high"]
        assert (report["threshold"] is None) == (task == "multiclass")  # multi-class decides by argmax
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    probs = ",".join(f"p_{c}" for c in sorted(scores["screening"]))  # folder order
    assert rows[0] == f"path,true,predicted,{probs},ood_score,uncertainty,abstain,reason"
    assert len(rows) == 1 + scores["n"]
    if task == "multilabel":
        assert any(";" in row.split(",")[1] for row in rows[1:])  # co-infections keep both labels
        assert len(list((tmp_path / "eval/plots/sklearn/confusion").glob("*.json"))) == 3
        # issue 25: the mean per-finding AUROC, as papers report it, in test.json and the summary
        aucs = [r["roc_auc"] for r in scores["per_class"].values()]
        assert scores["mean_auroc"] == pytest.approx(np.mean(aucs))
        from cxr.summaries import headline_text, test_summary

        assert test_summary(scores)["mean_auroc"] == round(scores["mean_auroc"], 4)
        assert f"mean ROC AUC over the 3 findings {scores['mean_auroc']:.3f}" in headline_text(scores, 3)  # the card
    for kind in ("roc", "precision_recall", "calibration"):
        assert len(list((tmp_path / f"eval/plots/sklearn/{kind}").glob("*.json"))) == 3, kind
    assert (tmp_path / "eval/plots/images/gradcam.png").is_file()


def test_ece_bins_are_the_calibration_plots_bins():
    """Issue 23, item 10: the ECE in test.json and the reliability diagram (scikit-learn's calibration_curve,
    through dvclive) must bin the same films: scores on bin edges (0.3, 0.5, 1.0) included."""
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random(400), [0.0, 0.1, 0.3, 0.3, 0.5, 0.5, 0.7, 1.0, 1.0]])
    truth = rng.random(len(scores)) < scores
    for bins in (5, 10, 15):
        observed, predicted = calibration_curve(truth, scores, n_bins=bins)
        table = reliability(truth, scores, bins)[1]
        assert [b["observed"] for b in table] == pytest.approx(list(observed))
        assert [b["predicted"] for b in table] == pytest.approx(list(predicted))
