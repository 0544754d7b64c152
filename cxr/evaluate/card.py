"""models/MODEL_CARD.md: the nine sections of Mitchell et al. (2019), as the Hugging Face template orders
them, under a Hugging Face metadata header: what the model is, its intended use, the factors its
performance varies with, the metrics, the training and evaluation data, the results with intervals
(test split, cross-validation and external sets when they exist), what the shortcut audit found, the
ethical considerations and the caveats. Written by the export stage from params.yaml and the metrics the
pipeline tracks, never by hand. The header is YAML written here (no huggingface_hub dependency for it)."""

from __future__ import annotations

import yaml

from cxr.config import Params
from cxr.model.spec import ModelSpec
from cxr.summaries import headline_text

INTENDED = """\
- Research and teaching: comparing training recipes for chest X-ray classification (frozen or fine-tuned
  ImageNet CNNs, losses, augmentation) reproducibly, and studying how such models fail on films from
  other hospitals.
- **Out of scope: any clinical use.** Not a medical device; no regulatory review; never a basis for
  diagnosis, triage or treatment."""

FACTORS = """\
- Relevant: the hospital or collection a film comes from (scanner, exposure, processing, burned-in text),
  the patient's age (public pneumonia sets are pediatric, COVID-19 sets adult), the view (PA, AP, lateral)
  and how the film was digitised (DICOM, screenshot, photograph). In public COVID-19 collections these
  vary with the label, so each is a possible shortcut.
- Evaluated here: by class (in Quantitative analyses); by source when cross-validation leaves one source out
  (`data.folds: source`) or external sets are scored (`evaluate.external`); not by age, sex or view (the
  metadata to do it is not in the data the pipeline reads)."""

METRICS = """\
- Accuracy and macro F1 on the test split; per screened class sensitivity, specificity, PPV and NPV at a
  threshold fitted on validation, with exact (Clopper-Pearson) 95 % intervals, ROC AUC with a bootstrap
  interval, and the expected calibration error. Sensitivity is the figure a screening use would be
  judged by; the intervals say how far a test of this size can be trusted.
- Abstention: the share of films the model declines (not a radiograph, out of distribution, uncertain)
  and the accuracy on those it answers (`evaluate.coverage`)."""

ETHICS = """\
- The films are of patients; public collections were released for research, often without the patients'
  individual consent to this use. Keep them under their own licences and never try to re-identify anyone.
- A model that reads the hospital or the patient's age instead of the lungs can look accurate and be
  wrong for exactly the patients unlike its training data; the shortcut audit and external results above
  are there to show it. Report them with any figure you quote.
- Errors are not symmetric: a missed infection (a false negative) and a false alarm have different costs;
  the thresholds here are fitted for a validation criterion, not for a clinical cost."""

CAVEATS = """\
- **Not for clinical use.** Research and teaching only.
- The test figures hold for images like the test split only: same sources, same preprocessing. Validate on
  an external source before trusting a score (`evaluate.external`), and read the shortcut audit above.
- Public COVID-19 X-ray collections mix hospitals, ages and scanners per class; a model can score well by
  reading those differences (Roberts et al. 2021, DeGrave et al. 2021).
- The demo data (`data.source: demo`) are synthetic phantoms, not radiographs.
- Licence: no licence has been chosen for this repository's code or the weights it trains; the training
  data's own licences apply to anything derived from them. Choose one before sharing the weights."""


def _interval(report: dict, key: str) -> str:
    value = report.get(key)
    if value is None:
        return "n/a"
    low, high = report.get(f"{key}_ci95_low"), report.get(f"{key}_ci95_high")
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value:.3f}"


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value if value is not None else "n/a")


def _data_source(params: Params) -> str:
    data = params.data
    if data.preset:
        return f"preset `{data.preset}` (Google Drive)"
    where = {"demo": "synthetic phantoms", "url": data.url, "folder": data.folder, "gdrive": data.gdrive_id}
    return f"`{data.source}`: {where.get(data.source, '')}"


def _screening_rows(test: dict) -> list[str]:
    rows = [
        "| class | threshold | sensitivity | specificity | PPV | NPV | ROC AUC | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cls, r in test.get("screening", {}).items():
        threshold = "argmax" if r.get("threshold") is None else f"{r['threshold']:.3f}"
        cells = [_interval(r, k) for k in ("sensitivity", "specificity", "ppv", "npv", "roc_auc")]
        rows.append(f"| {cls} | {threshold} | " + " | ".join(cells) + f" | {r.get('ece', float('nan')):.3f} |")
    return rows


def _model_section(params: Params, spec: ModelSpec, test: dict, exported: dict) -> list[str]:
    worst = max(exported.get("onnx_max_abs_diff", 0), exported.get("pt2_max_abs_diff", 0))
    return [
        "## Model details",
        f"- Version: the checkpoint with sha256 `{test.get('model_sha256', 'n/a')}` (registry artifact "
        "`cxr-classifier`: `git tag -a cxr-classifier@vX.Y.Z` versions it); trained by this repository's DVC "
        "pipeline, whose `dvc.lock` records every input.",
        f"- `{spec.arch}`, task `{spec.task}`, classes {', '.join(spec.classes)}; loss `{spec.loss}` "
        f"({'softmax' if spec.loss == 'ce' else 'one sigmoid per class'} over the logits).",
        f"- Initial weights: `{params.train.weights}`; head hidden layers {list(spec.hidden)}, dropout {spec.dropout}.",
        f"- Input: {spec.image_size} x {spec.image_size} grayscale ({spec.preprocessing}); best epoch "
        f"{test.get('checkpoint_epoch')} of {params.train.epochs}.",
        "- Files: `models/model.pt` (PyTorch checkpoint, `python -m stages.predict`), "
        "`models/export/model.onnx` and `models/export/model.pt2` (torch.export): input `pixels` float32 "
        f"(N, 1, {spec.image_size}, {spec.image_size}) in 0..255, output `logits` (N, {len(spec.classes)}); "
        f"both match the checkpoint on {exported.get('images')} test images to {worst:.1e} (max abs logit difference).",
    ] + ([
        f"- Scored and exported as the ensemble of {len(test['ensemble'])} fold models (`evaluate.ensemble: folds`, "
        "`models/cv/fold*/model.pt`; `python -m stages.predict --model models/cv`): the logits are those of the mean "
        "of their probabilities, and the best epochs above are theirs."
    ] if test.get("ensemble") else [])  # fmt: skip


def _data_section(params: Params, data: dict) -> list[str]:
    counts = [
        f"| {split} | {data[split]['total']} | "
        + ", ".join(f"{c} {n}" for c, n in data[split].items() if c != "total")
        + " |"
        for split in ("train", "val", "test")
        if split in data
    ]
    return ["## Training data", f"- Source: {_data_source(params)}; seed {params.seed}.", "",
            "| split | images | per class |", "|---|---|---|", *counts]  # fmt: skip


def _recipe_section(params: Params) -> list[str]:
    cfg = params.train
    return [
        "## Recipe",
        f"- {cfg.epochs} epochs, batch {cfg.batch_size}, optimizer `{cfg.optimizer}` lr {cfg.lr:g} "
        f"(weight decay {cfg.weight_decay:g}), schedule `{cfg.schedule.name}` with {cfg.schedule.warmup} warm-up "
        f"epochs, label smoothing {cfg.label_smoothing:g}, class weights `{cfg.class_weights}`, "
        f"sampler `{cfg.sampler}`, EMA {cfg.ema:g}, "
        f"freeze `{cfg.freeze}`.",
        f"- Augmentation: hflip {cfg.augment.hflip:g}, rotate {cfg.augment.rotate:g} deg, crop {cfg.augment.crop:g}, "
        f"brightness {cfg.augment.brightness:g}, contrast {cfg.augment.contrast:g}, gamma {cfg.augment.gamma:g}, "
        f"blur {cfg.augment.blur:g}, sharpen {cfg.augment.sharpen:g}, noise {cfg.augment.noise:g}, "
        f"resolution {cfg.augment.resolution:g}; test-time `{params.evaluate.tta}`.",
    ]


def _results_section(test: dict) -> list[str]:
    return [
        "## Test results (95% intervals: exact for proportions, bootstrap for AUCs)",
        f"- {test.get('n')} test images: {headline_text(test, 3)}; "
        f"thresholds fitted on validation (`{test.get('threshold_rule')}`).",
        "",
        *_screening_rows(test),
        "",
        "ECE: expected calibration error (reliability diagram in `dvc plots show`).",
        "",
        *_abstention_lines(test.get("abstention") or {}),
    ]


def _abstention_lines(rule: dict) -> list[str]:
    """When the model does not answer (cxr/evaluate/doubt.py), as evaluate fitted and measured it."""
    if not rule:
        return []
    return [
        f"When it does not answer (`evaluate.coverage` {rule.get('coverage')}): a film that is not a radiograph, "
        f"or whose out-of-distribution score is over {_num(rule.get('ood_threshold'))}, or whose uncertainty "
        f"(spread over {rule.get('uncertainty_over')}) is over {_num(rule.get('uncertainty_threshold'))}. On test: "
        f"{rule.get('flagged')} of {rule.get('n')} flagged, {_num(rule.get('answered_share'))} answered, accuracy "
        f"{_num(rule.get('accuracy_answered'))} on those against {_num(rule.get('accuracy_all'))} on all. "
        "Films from other hospitals are not all flagged: see the README's external figures.",
    ]


def _audit_section(params: Params, data: dict, test: dict) -> list[str]:
    shortcut, attribution = data.get("shortcut", {}), test.get("attribution", {})
    return [
        "## Shortcut audit",
        f"- Image properties alone (size, format, intensity, borders) predict the label with balanced accuracy "
        f"{_num(shortcut.get('balanced_accuracy'))} (chance {_num(shortcut.get('chance'))}); most telling: "
        f"`{shortcut.get('most_telling', 'n/a')}`. Above `verify.max_shortcut_accuracy` "
        f"({params.verify.max_shortcut_accuracy}) the labels can be read without the lungs.",
        f"- Grad-CAM evidence (on `{attribution.get('layer', 'n/a')}`, a cheap proxy): "
        f"{_num(attribution.get('central_share'))} of the mass in the central box "
        f"({_num(attribution.get('central_area'))} of the area), {_num(attribution.get('frame_share'))} in the "
        f"outer frame ({_num(attribution.get('frame_area'))} of the area).",
    ]


def _evaluation_data_section(params: Params, data: dict, cv: dict, external: dict) -> list[str]:
    test = data.get("test", {})
    lines = ["## Evaluation data",
             f"- The test split ({test.get('total', 'n/a')} images), from the same source as training, never seen "
             "while training or fitting thresholds (validation fits those)."]  # fmt: skip
    if cv.get("k"):
        pool = cv.get("pool", "train+val+test")
        lines.append(f"- Cross-validation: {cv['k']} folds ({cv.get('protocol', 'k-fold')}, pooled from {pool}), "
                     "each film tested once by a model that never saw it.")  # fmt: skip
    for name, scores in sorted(external.items()):
        lines.append(f"- External set `{name}`: {scores.get('n')} films from `{scores.get('folder')}` "
                     f"({scores.get('leaks_excluded', 0)} repeating training films left out).")  # fmt: skip
    if not cv.get("k") and not external:
        lines.append("- No cross-validation or external set was run (`data.folds`, `evaluate.external`): the "
                     "figures below say nothing about other hospitals.")  # fmt: skip
    return lines


def _cv_lines(cv: dict) -> list[str]:
    if not cv.get("k"):
        return []
    pooled = cv.get("pooled") or {}
    rows = [f"| {f.get('source') or f['fold']} | {f.get('n')} | {_num(f.get('accuracy'))} | {_num(f.get('f1_macro'))} |"
            for f in cv.get("folds", [])]  # fmt: skip
    return [
        "", f"Cross-validation ({cv.get('protocol', 'k-fold')}, {cv['k']} folds): accuracy "
        f"{_num(cv.get('accuracy_mean'))} ± {_num(cv.get('accuracy_std'))}, macro F1 {_num(cv.get('f1_macro_mean'))} "
        f"± {_num(cv.get('f1_macro_std'))} (mean ± spread over folds); all {pooled.get('n', 'n/a')} test films pooled: "
        f"accuracy {_num(pooled.get('accuracy'))}, macro F1 {_num(pooled.get('f1_macro'))}.",
        "", "| fold (or source) | films | accuracy | macro F1 |", "|---|---|---|---|", *rows,
    ]  # fmt: skip


def _external_lines(external: dict) -> list[str]:
    if not external:
        return []
    rows = []
    for name, r in sorted(external.items()):
        flagged = (r.get("abstention") or {}).get("flagged_share")
        cells = [r.get("n"), _num(r.get("accuracy")), _num(r.get("f1_macro")), _num(flagged)]
        rows.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return ["", "External sets, scored with the thresholds fitted on validation:", "",
            "| set | films | accuracy | macro F1 | share flagged |", "|---|---|---|---|---|", *rows]  # fmt: skip


def _front_matter(params: Params, spec: ModelSpec, test: dict, external: dict) -> list[str]:
    """The Hugging Face metadata header (YAML between --- lines): licence, library, tags, and the test
    (and external) results as a model-index."""
    results = [{"task": {"type": "image-classification"},
                "dataset": {"name": f"{params.data.source} test split", "type": params.data.source},
                "metrics": [{"type": "accuracy", "value": _rounded(test.get("accuracy"))},
                            {"type": "f1", "name": "macro F1", "value": _rounded(test.get("f1_macro"))}]}]  # fmt: skip
    for name, r in sorted(external.items()):
        results.append({"task": {"type": "image-classification"}, "dataset": {"name": name, "type": "external"},
                        "metrics": [{"type": "accuracy", "value": _rounded(r.get("accuracy"))}]})  # fmt: skip
    header = {
        "license": "other",
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["chest-x-ray", "medical-imaging", spec.arch, spec.task, "dvc"],
        "metrics": ["accuracy", "f1", "roc_auc"],
        "model-index": [{"name": "cxr-classifier", "results": results}],
    }
    return ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---"]


def model_card(
    params: Params, spec: ModelSpec, data: dict, test: dict, exported: dict, cv: dict | None = None,
    external: dict | None = None,
) -> str:
    """The card's markdown from params, the checkpoint's spec, metrics/data.json, metrics/test.json,
    metrics/export.json, and metrics/cv.json and metrics/external.json when given."""
    cv, external = cv or {}, external or {}
    results = _results_section(test)
    results[0] = "## Quantitative analyses (95% intervals: exact for proportions, bootstrap for AUCs)"
    sections = [
        _front_matter(params, spec, test, external),
        ["# Model card: chest X-ray classifier", "",
         "Generated by `dvc repro export` from params.yaml, models/model.pt and metrics/*.json; do not edit. "
         "Sections after Mitchell et al. 2019, Model Cards for Model Reporting."],
        _model_section(params, spec, test, exported),
        ["## Intended use", INTENDED],
        ["## Factors", FACTORS],
        ["## Metrics", METRICS],
        _data_section(params, data),
        _recipe_section(params),
        _evaluation_data_section(params, data, cv, external),
        results + _cv_lines(cv) + _external_lines(external),
        _audit_section(params, data, test),
        ["## Ethical considerations", ETHICS],
        ["## Caveats and recommendations", CAVEATS],
    ]  # fmt: skip
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
