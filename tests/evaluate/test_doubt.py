"""Out-of-distribution scores, uncertainty and abstention (cxr/evaluate/doubt.py, cxr/model/ood.py,
cxr/data/film_checks.py): the pieces, and the must-show on the demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.data.film_checks import film_problem
from cxr.data.phantoms import render_phantom
from cxr.evaluate.doubt import Abstention, Assessment, Scorer, conformal_threshold, risk_coverage
from cxr.evaluate.predict import assess_files
from cxr.evaluate.run import evaluate, load_abstention
from cxr.model.ensemble import load_scorer
from cxr.model.inference import Runtime
from cxr.model.ood import fit_density
from tests.conftest import REPO, train_on


def test_the_distance_is_mahalanobis_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(400, 5))).float()
    labels = np.repeat([0, 1], 200)
    feats[labels == 1] += 3.0
    density = fit_density(feats, labels, "layer4")
    x = torch.tensor([[0.0] * 5, [3.0] * 5, [20.0] * 5])
    d = density.distance(x).numpy()
    assert d[0] < 1 and d[1] < 1 and d[2] > 20  # near either mean; far from both
    prec = density.precision.double().numpy()
    diff = x[2].double().numpy() - density.means[1].double().numpy()
    assert d[2] == pytest.approx(np.sqrt(diff @ prec @ diff), rel=1e-4)


def test_conformal_threshold_and_the_rule_flag_what_lies_beyond_the_validation_films():
    assert conformal_threshold(np.arange(1, 101), 0.95) == 96  # ceil(101 * 0.95) = 96th smallest
    assert conformal_threshold(np.arange(5), 0.95) is None  # too few films to promise 95 %: flag nothing
    val = Assessment(np.zeros((100, 2)), np.arange(100.0), np.linspace(0, 0.1, 100), "test")
    rule = Abstention.fit(0.9, val, [""] * 100)
    new = Assessment(np.zeros((3, 2)), np.array([5.0, 500.0, 5.0]), np.array([0.0, 0.0, 1.0]), "test")
    reasons = rule.reasons(new, ["", "", ""])
    assert reasons[0] == "" and reasons[1].startswith("unlike the training films")
    assert reasons[2].startswith("uncertain")
    assert rule.reasons(new, ["not a radiograph: x", "", ""])[0] == "not a radiograph: x"
    assert Abstention.from_json(json.loads(json.dumps(rule.to_json()))) == rule


def test_risk_coverage_ranks_the_most_certain_first():
    correct = np.array([True, True, False, True, False])
    curve = risk_coverage(correct, np.array([0.1, 0.2, 0.9, 0.3, 0.8]))
    assert curve[0] == {"coverage": 0.2, "risk": 0.0, "accuracy": 1.0}
    assert curve[2]["risk"] == 0 and curve[-1] == {"coverage": 1.0, "risk": 0.4, "accuracy": 0.6}


def test_film_checks_pass_phantoms_and_refuse_what_is_not_a_radiograph():
    rng = np.random.default_rng(1)
    for cls in ("normal", "infected", "pneumonia"):
        assert film_problem(Image.fromarray(render_phantom(cls, 128, 0.3, rng))) == ""
    colour = np.zeros((100, 120, 3), np.uint8)
    colour[..., 0], colour[..., 2] = 200, 40
    screen = Image.new("L", (256, 200), 255)
    for row in range(12):
        ImageDraw.Draw(screen).text((5, 5 + row * 16), f"Report line {row}: lorem ipsum dolor sit", fill=0)
    assert "colour" in film_problem(Image.fromarray(colour))
    assert "blank" in film_problem(Image.new("L", (64, 64), 90))
    assert "aspect" in film_problem(Image.new("L", (300, 60), 90))
    assert "screenshot" in film_problem(screen)


def foreign_films(folder, n: int = 8) -> dict[str, list]:
    """Inputs the demo model never saw, by kind: a colour photo, random noise, a blank frame, a rotated
    phantom, a cropped phantom, and phantoms from another generator setting (inverted polarity)."""
    rng = np.random.default_rng(123)
    folder.mkdir(parents=True)
    kinds: dict[str, list] = {}

    def save(kind, i, array, suffix=".png"):
        path = folder / f"{kind}_{i}{suffix}"
        Image.fromarray(array).save(path)
        kinds.setdefault(kind, []).append(path)

    for i in range(n):
        yy, xx = np.mgrid[0:192, 0:256]
        photo = np.stack([(xx + 20 * i) % 256, (yy * 1.3) % 256, 120 + 60 * np.sin(xx / 17 + i)], -1)
        save("photo", i, photo.astype(np.uint8), ".jpg")
        save("noise", i, rng.integers(0, 256, (128, 128), dtype=np.uint8))
        save("blank", i, np.full((128, 128), 30 + 20 * i, np.uint8))
        film = render_phantom("normal" if i % 2 else "infected", 128, 0.3, rng)
        save("rotated", i, np.ascontiguousarray(np.rot90(film)))
        save("cropped", i, np.asarray(Image.fromarray(film[20:84, 30:94]).resize((128, 128))))
        save("inverted", i, 255 - render_phantom("normal", 128, 0.3, rng))
    return kinds


@pytest.mark.slow
def test_the_demo_model_flags_foreign_inputs_but_few_test_films(tmp_path):
    """Issue 21's must-show: >= 90 % of foreign inputs flagged, <= 5 % of the test split."""
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))  # the demo model, as `dvc repro`
    write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    train_on(params, tmp_path / "raw", tmp_path)
    model_path, metrics = tmp_path / "models/model.pt", tmp_path / "test.json"
    scores = evaluate(params, model_path, tmp_path / "data/decoded", tmp_path / "raw", metrics,
                      tmp_path / "p.csv", tmp_path / "eval")  # fmt: skip
    assert scores["abstention"]["ood_scored"] and scores["abstention"]["flagged_share"] <= 0.05
    model, spec, payload = load_scorer([model_path])
    runtime = Runtime.select()
    scorer = Scorer(model, spec, payload["densities"], 64, "none", runtime, params.verify.max_pixels)
    rule = load_abstention(metrics, [model_path])
    kinds = foreign_films(tmp_path / "foreign")
    scored = assess_files(scorer, [p for paths in kinds.values() for p in paths], rule)
    flagged = dict(zip(scored.files, rule.flags(scored.doubt, scored.checks), strict=True))
    shares = {kind: np.mean([bool(flagged[p]) for p in paths]) for kind, paths in kinds.items()}
    assert np.mean(list(shares.values())) >= 0.9 and min(shares.values()) >= 0.75, shares
    curve = json.loads((tmp_path / "eval/plots/custom/risk_coverage.json").read_text())
    assert curve[-1]["coverage"] == 1.0 and curve[-1]["accuracy"] == pytest.approx(scores["accuracy"])
