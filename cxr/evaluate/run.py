"""Scoring a checkpoint on the test split: decisions at a threshold fitted on validation,
screening metrics with confidence intervals, calibration, per-image predictions, plots and
a Grad-CAM gallery."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from cxr.atomic import atomic_path, write_json
from cxr.config import Params
from cxr.data.film_checks import check_files
from cxr.data.images import is_image, open_rgb
from cxr.data.layout import UNLABELED
from cxr.data.store import SplitStore, StoreError, decode_all
from cxr.evaluate.doubt import (
    DOUBT_COLUMNS,
    Abstention,
    Assessment,
    Scorer,
    doubt_cells,
    right,
    risk_coverage,
    selective_scores,
)
from cxr.evaluate.gallery import Outcomes, pick_examples, prediction_grid
from cxr.evaluate.gradcam import attribution_shares, gradcam, gradcam_layer, overlay
from cxr.evaluate.log import PlotLog, plot_log
from cxr.evaluate.scores import classification_scores, multilabel_scores
from cxr.evaluate.screening import ThresholdRule, operating_points, screening_report
from cxr.model.decisions import label_name, screened_classes, thresholded
from cxr.model.ensemble import as_paths, explained, identity, load_scorer
from cxr.model.inference import Runtime
from cxr.model.spec import ModelSpec
from cxr.progress import steps


def _class_view(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, i: int, multilabel: bool):
    """(truth, scores, decisions) of class i against the rest; films where finding i is uncertain are left out."""
    if multilabel:
        known = ~np.isnan(labels[:, i])
        return labels[known, i] > 0, probs[known, i], preds[known, i] > 0
    return labels == i, probs[:, i], preds == i


def write_predictions(
    path: Path, test: SplitStore, doubt: Assessment, preds: np.ndarray, classes, reasons: list[str]
) -> None:
    """metrics/predictions.csv: one row per test image with true and predicted label(s), every
    class probability, and the doubt columns (cxr.evaluate.doubt): ood_score, uncertainty, abstain, reason."""

    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in classes), *DOUBT_COLUMNS])
        for i, file in enumerate(test.files):
            true, pred = (label_name(row, classes, test.multilabel) for row in (test.labels[i], preds[i]))
            writer.writerow([file, true, pred, *(f"{p:.6f}" for p in doubt.probs[i]), *doubt_cells(doubt, i, reasons)])


def _log_plots(log: PlotLog, test: SplitStore, probs, preds, classes, screened: list[int], bins: int) -> None:
    names = np.asarray(classes)
    for i in screened:
        truth, scores, decided = _class_view(test.labels, probs, preds, i, test.multilabel)
        if truth.all() or not truth.any():
            continue  # one class only: no curve
        cls, truth = classes[i], truth.astype(int)
        log.curve("roc", truth, scores, f"roc/{cls}.json", cls)
        log.curve("precision_recall", truth, scores, f"precision_recall/{cls}.json", cls)
        log.curve("calibration", truth, scores, f"calibration/{cls}.json", cls, n_bins=bins)
        log.confusion(  # every task: the class against the rest at its threshold (multi-label: the only one)
            np.where(truth, cls, f"not {cls}").tolist(),
            np.where(decided, cls, f"not {cls}").tolist(),
            name=f"confusion/{cls}.json",
        )
    if not test.multilabel:
        log.confusion(names[test.labels].tolist(), names[preds].tolist())


def write_submission(scorer: Scorer, unlabeled: Path, thresholds, rule: Abstention, path: Path) -> int:
    """Predictions for the images of data/raw/unlabeled (a hand-in set) as a submission CSV:
    file (relative to that folder), label (the decision), every class probability and the doubt
    columns. Returns the row count; with no such folder the file holds only its header."""
    files = sorted(p for p in unlabeled.rglob("*") if is_image(p)) if unlabeled.is_dir() else []
    spec = scorer.spec
    good, pixels, problems = decode_all(files, spec.image_size, preprocessing=spec.preprocessing)
    for bad, why in problems:
        print(f"evaluate: submission: skipped {bad}: {why}")
    doubt = scorer.assess(pixels)
    reasons = rule.reasons(doubt, check_files(good, scorer.max_pixels))
    decided = spec.decide(doubt.probs, thresholds) if len(good) else []
    with atomic_path(Path(path)) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", *(f"p_{c}" for c in spec.classes), *DOUBT_COLUMNS])
        for i, (file, decision) in enumerate(zip(good, decided, strict=True)):
            label = label_name(decision, spec.classes, spec.multilabel)
            probs = (f"{p:.6f}" for p in doubt.probs[i])
            writer.writerow([file.relative_to(unlabeled).as_posix(), label, *probs, *doubt_cells(doubt, i, reasons)])
    return len(good)


def attribution_summary(model, test: SplitStore, probs, preds, runtime, limit: int = 256, batch: int = 32) -> dict:
    """Where Grad-CAM puts the evidence for the predicted class over (up to `limit`) test images:
    shares of its mass in the central box and the outer frame (cxr.evaluate.gradcam; a cheap proxy)."""
    target = probs.argmax(1) if test.multilabel else preds
    chosen = list(range(min(limit, len(test))))
    if not chosen:
        return {}
    layer = gradcam_layer(model, runtime.images(test[chosen[:1]]))
    cams = [
        gradcam(
            model, runtime.images(test[chosen[i : i + batch]]), torch.as_tensor(target[chosen[i : i + batch]]), layer
        )
        for i in range(0, len(chosen), batch)
    ]
    return {"layer": layer, **attribution_shares(torch.cat(cams))} if cams else {}


def _gallery(model, spec: ModelSpec, test: SplitStore, probs, preds, per_kind: int, raw_dir: Path, runtime):
    outcomes = Outcomes(test.labels, probs, preds, spec.classes, spec.multilabel)
    examples = pick_examples(outcomes, per_kind)
    chosen = examples[0] + examples[1]
    predictions = prediction_grid(lambda i: open_rgb(raw_dir / test.files[i]), outcomes, examples)
    if not chosen:
        return predictions, None
    pixels = test[chosen]
    # explain the decision: the predicted class (multi-label: the most probable one)
    target = probs[chosen].argmax(1) if spec.multilabel else preds[chosen]
    images = runtime.images(pixels)
    layer = gradcam_layer(model, images)
    cams = gradcam(model, images, torch.as_tensor(target), layer).numpy()
    overlays = {i: overlay(pixels[k].numpy(), cams[k]) for k, i in enumerate(chosen)}
    title = f"Grad-CAM on {layer} for the predicted class; red = strongest evidence"
    cam_grid = prediction_grid(overlays.__getitem__, outcomes, examples, title)
    return predictions, cam_grid


def _screening(params: Params, spec: ModelSpec, labels, probs, preds, thresholds) -> dict:
    """Per screened class: its threshold and screening report (cxr.evaluate.screening) on test."""
    cfg, out = params.evaluate, {}
    for i in screened_classes(spec.classes, spec.multilabel):
        truth, class_scores, decided = _class_view(labels, probs, preds, i, spec.multilabel)
        report = screening_report(truth, class_scores, decided, cfg.bootstrap, params.seed, cfg.calibration_bins)
        out[spec.classes[i]] = {"threshold": thresholds[spec.classes[i]], **report}
    return out


def evaluate(
    params: Params,
    model_path: Path | list[Path],
    store_dir: Path,
    raw_dir: Path,
    metrics_path: Path,
    predictions_path: Path,
    live_dir: Path,
    submission_path: Path | None = None,
) -> dict:
    """Score `model_path` (a checkpoint, or a list of them: their ensemble) on test; returns (and
    writes) the metrics. With `submission_path`, also predict data/raw/unlabeled (a hand-in set) into that CSV."""
    cfg, say = params.evaluate, steps("evaluate")
    paths = as_paths(model_path)
    model, spec, checkpoint = load_scorer(paths)
    runtime = Runtime.select().scaled(spec)
    runtime.prepare_model(model)
    val, test = (SplitStore(store_dir, name, spec.image_size, spec.preprocessing) for name in ("val", "test"))
    if test.classes != spec.classes:
        raise StoreError(f"{store_dir}: classes {list(test.classes)} differ from the model's {list(spec.classes)}")

    say(f"{len(val)} validation and {len(test)} test images through the model (tta: {cfg.tta})")
    scorer = Scorer(model, spec, checkpoint["densities"], cfg.batch_size, cfg.tta, runtime, params.verify.max_pixels)
    val_doubt = scorer.assess(val)
    rule, doubt, test_checks = fit_abstention(scorer, cfg.coverage, val_doubt, (val, test), raw_dir)
    val_probs, probs, reasons = val_doubt.probs, doubt.probs, rule.reasons(doubt, test_checks)
    say(f"scores and intervals ({cfg.bootstrap} bootstrap resamples for F1 and AUCs), Grad-CAM attribution")
    preds, thresholds = operating_points(
        spec.classes, spec.multilabel, val.labels, val_probs, probs, ThresholdRule(cfg.threshold)
    )
    if spec.multilabel:
        scores = multilabel_scores(test.labels, probs, spec.classes, list(thresholds.values()))
    else:
        scores = classification_scores(test.labels, probs, spec.classes, preds)
    scores["threshold_rule"] = str(cfg.threshold) if thresholded(spec.classes, spec.multilabel) else "argmax"
    scores["screening"] = _screening(params, spec, test.labels, probs, preds, thresholds)
    scores["checkpoint_epoch"] = checkpoint["epoch"]
    scores["model_sha256"] = identity(paths)  # lets `stages.predict` and `external` reuse these thresholds
    if len(paths) > 1:
        scores["ensemble"] = checkpoint["members"]
    scores["tta"] = cfg.tta  # ... and the test-time augmentation they were fitted with
    scores["attribution"] = attribution_summary(explained(model), test, probs, preds, runtime)
    scores["abstention"] = abstention_report(rule, doubt, test_checks, reasons, test.labels, preds, spec)
    if submission_path is not None:
        scores["submission_rows"] = write_submission(
            scorer, Path(raw_dir) / UNLABELED, thresholds, rule, submission_path
        )
    write_json(metrics_path, scores)
    write_predictions(predictions_path, test, doubt, preds, spec.classes, reasons)
    say(f"plots and galleries ({cfg.grid_images} images per grid)")
    _plots(live_dir, cfg, scorer, test, doubt, preds, raw_dir)
    say("done")
    return scores


def _plots(live_dir: Path, cfg, scorer: Scorer, test: SplitStore, doubt: Assessment, preds, raw_dir) -> None:
    """Curves, confusion matrices, the risk-coverage curve and the galleries of the test split."""
    model, spec, runtime, probs = scorer.model, scorer.spec, scorer.runtime, doubt.probs
    with plot_log(live_dir) as log:
        screened = screened_classes(spec.classes, spec.multilabel)
        _log_plots(log, test, probs, preds, spec.classes, screened, cfg.calibration_bins)
        log.table("risk_coverage.json", risk_coverage(right(test.labels, preds), doubt.uncertainty))
        if cfg.grid_images:
            grid, cams = _gallery(explained(model), spec, test, probs, preds, cfg.grid_images, raw_dir, runtime)
            log.image("predictions.png", grid)
            if cams is not None:
                log.image("gradcam.png", cams)


def fit_abstention(scorer: Scorer, coverage: float, val_doubt: Assessment, splits: tuple, raw_dir: Path):
    """The abstention rule fitted on validation (its films' assessment `val_doubt` and model-free
    checks), and the test films' assessment and checks: (rule, test assessment, test checks).
    `splits`: the (val, test) stores, whose files lie under `raw_dir`."""
    val, test = splits
    steps("evaluate")("checks that each film is a radiograph; the abstention rule fitted on validation")
    val_checks, test_checks = (
        check_files([Path(raw_dir) / f for f in s.files], scorer.max_pixels) for s in (val, test)
    )
    rule = Abstention.fit(coverage, val_doubt, val_checks)
    return rule, scorer.assess(test), test_checks


def abstention_report(rule: Abstention, doubt: Assessment, checks, reasons, labels, preds, spec: ModelSpec) -> dict:
    """metrics/test.json `abstention`: the fitted rule, how many test films it flags and leaves
    uncertain, and the scores on every film against those on the films answered."""
    flags = rule.flags(doubt, checks)
    return {
        **rule.to_json(),
        "uncertainty_over": doubt.spread_over,
        "ood_scored": bool(np.isfinite(doubt.ood).any()),
        "flagged": sum(bool(f) for f in flags),
        "flagged_share": float(np.mean([bool(f) for f in flags])) if flags else 0.0,
        "failed_checks": sum(bool(c) for c in checks),
        **selective_scores(labels, preds, reasons, spec.classes, spec.multilabel),
    }


def load_decision_thresholds(metrics_path: Path, paths: list[Path]) -> tuple[dict[str, float | None] | None, str]:
    """The thresholds `evaluate` fitted for this very checkpoint (or ensemble of `paths`) and the
    test-time augmentation they were fitted with, if its metrics file says so; else (None, "none")."""
    scores = _own_metrics(metrics_path, paths)
    if scores is None:
        return None, "none"
    thresholds = {cls: report.get("threshold") for cls, report in scores.get("screening", {}).items()}
    return thresholds, scores.get("tta", "none")


def load_abstention(metrics_path: Path, paths: list[Path]) -> Abstention | None:
    """The abstention rule `evaluate` fitted for this very checkpoint (or ensemble), or None."""
    scores = _own_metrics(metrics_path, paths)
    return Abstention.from_json(scores.get("abstention")) if scores else None


def _own_metrics(metrics_path: Path, paths: list[Path]) -> dict | None:
    """metrics/test.json when it was written for this checkpoint (or ensemble of `paths`), else None."""
    if not Path(metrics_path).is_file():
        return None
    scores = json.loads(Path(metrics_path).read_text())
    return scores if scores.get("model_sha256") == identity(paths) else None
