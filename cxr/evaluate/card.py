"""models/MODEL_CARD.md: what the model is, what it was trained on, how well it did (with
intervals), what the shortcut audit found, and what it must not be used for. Written by the
export stage from params.yaml and the metrics the pipeline tracks, never by hand."""

from __future__ import annotations

from cxr.config import Params
from cxr.model.spec import ModelSpec
from cxr.summaries import headline_text

LIMITS = """\
- **Not for clinical use.** Not a medical device; no regulatory review; never a basis for
  diagnosis or treatment. Research and teaching only.
- Public COVID-19 X-ray collections mix hospitals, ages and scanners per class; a model can
  score well by reading those differences instead of the lungs (Roberts et al. 2021, DeGrave et
  al. 2021). Read the shortcut audit below and validate on an external source before trusting a
  score.
- The test figures hold for images like the test split only: same sources, same preprocessing.
- The demo data (`data.source: demo`) are synthetic phantoms, not radiographs."""


def _interval(report: dict, key: str) -> str:
    value = report.get(key)
    if value is None:
        return "n/a"
    low, high = report.get(f"{key}_ci95_low"), report.get(f"{key}_ci95_high")
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value:.3f}"


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
    worst = max(exported.get("onnx_max_abs_diff", 0), exported.get("torchscript_max_abs_diff", 0))
    return [
        "## Model",
        f"- `{spec.arch}`, task `{spec.task}`, classes {', '.join(spec.classes)}; loss `{spec.loss}` "
        f"({'softmax' if spec.loss == 'ce' else 'one sigmoid per class'} over the logits).",
        f"- Initial weights: `{params.train.weights}`; head hidden layers {list(spec.hidden)}, dropout {spec.dropout}.",
        f"- Input: {spec.image_size} x {spec.image_size} grayscale ({spec.preprocessing}); best epoch "
        f"{test.get('checkpoint_epoch')} of {params.train.epochs}.",
        "- Files: `models/model.pt` (PyTorch checkpoint, `python -m stages.predict`), "
        "`models/export/model.onnx` and `models/export/model.torchscript.pt`: input `pixels` float32 "
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


def model_card(params: Params, spec: ModelSpec, data: dict, test: dict, exported: dict) -> str:
    """The card's markdown from params, the checkpoint's spec, metrics/data.json, metrics/test.json
    and metrics/export.json."""
    sections = [
        ["# Model card: chest X-ray classifier", "",
         "Generated by `dvc repro export` from params.yaml, models/model.pt and metrics/*.json; do not edit."],
        _model_section(params, spec, test, exported),
        _data_section(params, data),
        _recipe_section(params),
        _results_section(test),
        _audit_section(params, data, test),
        ["## Intended use and limits", LIMITS],
    ]  # fmt: skip
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
