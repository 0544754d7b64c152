"""External validation (`evaluate.external`): the trained model scored on further `{class}/file`
folders from other sources, with the thresholds evaluate fitted on validation.

Each set is first checked against the training data: an image whose pixels, or perceptual
hash, match one in data/raw would inflate the score, so it is left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.atomic import write_json
from cxr.data.known_films import KnownFilms
from cxr.data.splits import DatasetError, scan_split
from cxr.evaluate.doubt import Abstention, Scorer, selective_scores
from cxr.evaluate.log import PlotLog, plot_log
from cxr.evaluate.predict import assess_files
from cxr.evaluate.run import load_abstention, load_decision_thresholds
from cxr.evaluate.scores import classification_scores, multilabel_scores
from cxr.model.decisions import DEFAULT_THRESHOLD, screened_classes
from cxr.model.ensemble import as_paths, load_scorer
from cxr.model.inference import Runtime
from cxr.paths import user_path


def external_files(folder: Path, classes: tuple[str, ...], multilabel: bool):
    """(files, labels) of a `{class}/file` folder (or one with a labels.csv), in the model's class order."""
    folder = user_path(folder)
    if not folder.is_dir():
        raise DatasetError(f"evaluate.external: {folder} is not a folder of {{class}}/file images")
    found = scan_split(folder.parent, folder.name, None, multilabel)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise DatasetError(
            f"evaluate.external: {folder} has classes {unknown} the model does not know ({list(classes)})"
        )
    remap = np.asarray([classes.index(c) for c in found.classes])
    if multilabel:
        labels = np.zeros((len(found.files), len(classes)), np.float32)
        labels[:, remap] = found.labels
    else:
        labels = remap[found.labels]
    return list(found.files), labels


@dataclass(frozen=True)
class Scoring:
    """How every external set is scored: evaluate's thresholds, test-time augmentation and abstention
    rule (fitted for this checkpoint), evaluate.batch_size, and the device (in `scorer`)."""

    thresholds: dict
    scorer: Scorer
    rule: Abstention | None


def score_set(name: str, folder: Path, scoring: Scoring, training: KnownFilms, log: PlotLog) -> dict:
    """Scores of one external set, with its confusion matrix and ROC curves logged to `log`, and how
    many of its films the abstention rule flags, with the accuracy on the films answered."""
    spec = scoring.scorer.spec
    files, labels = external_files(folder, spec.classes, spec.multilabel)
    leak = training.repeated(files)
    keep = [i for i, bad in enumerate(leak) if not bad]
    if not files:
        raise DatasetError(f"evaluate.external.{name}: {folder} holds no images; expected {{class}}/file images")
    if not keep:
        raise DatasetError(
            f"evaluate.external.{name}: all {len(files)} images of {folder} repeat training images (data/raw) "
            "exactly or nearly, so nothing is left to validate on; point it at films the model did not train on"
        )
    scored = assess_files(scoring.scorer, [files[i] for i in keep], scoring.rule)
    if scored.problems:
        shown = "; ".join(f"{path}: {why}" for path, why in scored.problems[:5])
        more = f" (and {len(scored.problems) - 5} more, listed in external.json)" if len(scored.problems) > 5 else ""
        print(f"external: {name}: {len(scored.problems)} unreadable images left out: {shown}{more}", flush=True)
    if not scored.files:
        raise DatasetError(
            f"evaluate.external.{name}: none of the {len(keep)} images of {folder} could be read "
            f"(e.g. {scored.problems[0][0]}: {scored.problems[0][1]}); fix or replace the files"
        )
    decoded = set(scored.files)
    kept = [i for i in keep if files[i] in decoded]
    labels = labels[kept]
    thresholds = scoring.thresholds
    probs = scored.doubt.probs
    preds = spec.decide(probs, thresholds)
    if spec.multilabel:
        cuts = [thresholds.get(c) or DEFAULT_THRESHOLD for c in spec.classes]
        scores = multilabel_scores(labels, probs, spec.classes, cuts)
    else:
        scores = classification_scores(labels, probs, spec.classes, preds)
        names = np.asarray(spec.classes)
        log.confusion(names[labels].tolist(), names[preds].tolist(), name=f"confusion/{name}.json")
    for i in screened_classes(spec.classes, spec.multilabel):
        truth = labels[:, i] > 0 if spec.multilabel else labels == i
        if 0 < truth.sum() < len(truth):
            cls = spec.classes[i]
            log.curve("roc", truth.astype(int), probs[:, i], f"roc/{name}/{cls}.json", f"{name}: {cls}")
    scores.update({"folder": str(folder), "leaks_excluded": int(sum(leak)), "unreadable": len(scored.problems)})
    scores["unreadable_files"] = [{"path": path, "why": why} for path, why in scored.problems]
    flags = scoring.rule.flags(scored.doubt, scored.checks) if scoring.rule else scored.checks
    scores["abstention"] = {
        "flagged": sum(bool(f) for f in flags),
        "flagged_share": float(np.mean([bool(f) for f in flags])) if flags else 0.0,
        **selective_scores(labels, preds, scored.reasons, spec.classes, spec.multilabel),
    }
    return scores


def validate_externally(
    params, scored: Path | list[Path], metrics: Path, raw_dir: Path, out: Path, live_dir: Path
) -> dict:
    """Score every set of `evaluate.external` with `scored` (one checkpoint, or the fold checkpoints
    as an ensemble); write and return metrics/external.json (keyed by set)."""
    paths, sets = as_paths(scored), params.evaluate.external
    results: dict = {}
    if sets:
        model, spec, payload = load_scorer(paths)
        runtime = Runtime.select().scaled(spec)
        runtime.prepare_model(model)
        thresholds, tta = load_decision_thresholds(metrics, paths)
        if thresholds is None:
            scored = paths[0] if len(paths) == 1 else f"the ensemble of {len(paths)} fold models"
            raise DatasetError(f"{metrics}: not written for {scored}; run `dvc repro evaluate` first")
        densities = payload["densities"]
        scorer = Scorer(model, spec, densities, params.evaluate.batch_size, tta, runtime, params.verify.max_pixels)
        scoring = Scoring(thresholds, scorer, load_abstention(metrics, paths))
        training = KnownFilms.read(raw_dir, params.verify.near_duplicate_bits, params.verify.max_pixels)
        with plot_log(live_dir) as log:
            for name, folder in sets.items():
                results[name] = score_set(name, Path(folder), scoring, training, log)
    else:  # the stage's output folder exists either way, its plot folders hold an empty valid file
        Path(live_dir).mkdir(parents=True, exist_ok=True)
        (Path(live_dir) / "README").write_text("evaluate.external is empty: no external sets were scored\n")
        for kind in ("confusion", "roc"):  # so `dvc plots show` has nothing to draw, and says nothing
            empty = Path(live_dir) / "plots" / "sklearn" / kind / "no_external_sets.json"
            empty.parent.mkdir(parents=True, exist_ok=True)
            empty.write_text("[]\n")
    write_json(out, results)
    return results
