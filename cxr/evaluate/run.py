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
from cxr.data.images import is_image, open_rgb
from cxr.data.layout import UNLABELED
from cxr.data.store import SplitStore, StoreError, decode_all
from cxr.evaluate.gallery import Outcomes, pick_examples, prediction_grid
from cxr.evaluate.gradcam import attribution_shares, gradcam, gradcam_layer, overlay
from cxr.evaluate.log import PlotLog, plot_log
from cxr.evaluate.predict import score_images
from cxr.evaluate.scores import classification_scores, multilabel_scores
from cxr.evaluate.screening import ThresholdRule, operating_points, screening_report
from cxr.model.decisions import label_name, screened_classes, thresholded
from cxr.model.ensemble import as_paths, explained, identity, load_scorer
from cxr.model.inference import Runtime
from cxr.model.spec import ModelSpec
from cxr.progress import steps


def _class_view(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, i: int, multilabel: bool):
    """(truth, scores, decisions) of class i against the rest."""
    if multilabel:
        return labels[:, i] > 0, probs[:, i], preds[:, i] > 0
    return labels == i, probs[:, i], preds == i


def write_predictions(path: Path, test: SplitStore, probs: np.ndarray, preds: np.ndarray, classes) -> None:
    """metrics/predictions.csv: one row per test image with true and predicted label(s) and
    every class probability."""

    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in classes)])
        for i, file in enumerate(test.files):
            true, pred = (label_name(row, classes, test.multilabel) for row in (test.labels[i], preds[i]))
            writer.writerow([file, true, pred, *(f"{p:.6f}" for p in probs[i])])


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


def write_submission(model, spec: ModelSpec, unlabeled: Path, thresholds, cfg, runtime, path: Path) -> int:
    """Predictions for the images of data/raw/unlabeled (a hand-in set) as a submission CSV:
    file (relative to that folder), label (the decision) and every class probability. Returns
    the row count; with no such folder the file holds only its header. `cfg` is params.evaluate
    (batch size and test-time augmentation, as for the test split)."""
    files = sorted(p for p in unlabeled.rglob("*") if is_image(p)) if unlabeled.is_dir() else []
    good, pixels, problems = decode_all(files, spec.image_size, preprocessing=spec.preprocessing)
    for bad, why in problems:
        print(f"evaluate: submission: skipped {bad}: {why}")
    probs = score_images(model, spec, pixels, cfg.batch_size, cfg.tta, runtime)
    decided = spec.decide(probs, thresholds) if len(good) else []
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", *(f"p_{c}" for c in spec.classes)])
        for file, row, decision in zip(good, probs, decided, strict=True):
            label = label_name(decision, spec.classes, spec.multilabel)
            writer.writerow([file.relative_to(unlabeled).as_posix(), label, *(f"{p:.6f}" for p in row)])
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
    runtime = Runtime.select()
    paths = as_paths(model_path)
    model, spec, checkpoint = load_scorer(paths)
    runtime.prepare_model(model)
    val, test = (SplitStore(store_dir, name, spec.image_size, spec.preprocessing) for name in ("val", "test"))
    if test.classes != spec.classes:
        raise StoreError(f"{store_dir}: classes {list(test.classes)} differ from the model's {list(spec.classes)}")

    say(f"{len(val)} validation and {len(test)} test images through the model (tta: {cfg.tta})")
    val_probs, probs = (score_images(model, spec, s, cfg.batch_size, cfg.tta, runtime) for s in (val, test))
    say(f"scores and intervals ({cfg.bootstrap} bootstrap resamples for F1 and AUCs), Grad-CAM attribution")
    rule = ThresholdRule(cfg.threshold)
    preds, thresholds = operating_points(spec.classes, spec.multilabel, val.labels, val_probs, probs, rule)
    if spec.multilabel:
        scores = multilabel_scores(test.labels, probs, spec.classes, list(thresholds.values()))
    else:
        scores = classification_scores(test.labels, probs, spec.classes, preds)
    screened = screened_classes(spec.classes, spec.multilabel)
    screening = _screening(params, spec, test.labels, probs, preds, thresholds)
    scores["threshold_rule"] = str(cfg.threshold) if thresholded(spec.classes, spec.multilabel) else "argmax"
    scores["screening"] = screening
    scores["checkpoint_epoch"] = checkpoint["epoch"]
    scores["model_sha256"] = identity(paths)  # lets `stages.predict` and `external` reuse these thresholds
    if len(paths) > 1:
        scores["ensemble"] = checkpoint["members"]
    scores["tta"] = cfg.tta  # ... and the test-time augmentation they were fitted with
    scores["attribution"] = attribution_summary(explained(model), test, probs, preds, runtime)
    if submission_path is not None:
        scores["submission_rows"] = write_submission(
            model, spec, Path(raw_dir) / UNLABELED, thresholds, cfg, runtime, Path(submission_path)
        )
    write_json(metrics_path, scores)
    write_predictions(predictions_path, test, probs, preds, spec.classes)
    say(f"plots and galleries ({cfg.grid_images} images per grid)")
    with plot_log(live_dir) as log:
        _log_plots(log, test, probs, preds, spec.classes, screened, cfg.calibration_bins)
        if cfg.grid_images:
            grid, cams = _gallery(explained(model), spec, test, probs, preds, cfg.grid_images, raw_dir, runtime)
            log.image("predictions.png", grid)
            if cams is not None:
                log.image("gradcam.png", cams)
    say("done")
    return scores


def load_decision_thresholds(metrics_path: Path, paths: list[Path]) -> tuple[dict[str, float | None] | None, str]:
    """The thresholds `evaluate` fitted for this very checkpoint (or ensemble of `paths`) and the
    test-time augmentation they were fitted with, if its metrics file says so; else (None, "none")."""
    if not Path(metrics_path).is_file():
        return None, "none"
    scores = json.loads(Path(metrics_path).read_text())
    if scores.get("model_sha256") != identity(paths):
        return None, "none"
    thresholds = {cls: report.get("threshold") for cls, report in scores.get("screening", {}).items()}
    return thresholds, scores.get("tta", "none")
