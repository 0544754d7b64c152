"""Stage `export`: the best checkpoint as ONNX and torch.export (.pt2) files, each checked against the
checkpoint on the test images, and models/MODEL_CARD.md from the metrics the pipeline tracks."""

from __future__ import annotations

import json

from cxr.atomic import write_json, write_text
from cxr.config import load_params
from cxr.data.store import SplitStore
from cxr.evaluate.card import model_card
from cxr.model.ensemble import identity, load_scorer, scored_paths
from cxr.model.export import export, onnx_metadata
from cxr.paths import (
    CV_DIR,
    CV_METRICS,
    DATA_METRICS,
    DECODED_DIR,
    EXPORT_DIR,
    EXPORT_METRICS,
    EXPORT_SUMMARY,
    EXTERNAL_METRICS,
    MODEL_CARD,
    MODEL_PATH,
    TEST_METRICS,
)
from cxr.stage import stage
from cxr.summaries import export_summary


@stage("export")
def main() -> None:
    params = load_params()
    paths = scored_paths(params.evaluate.ensemble, MODEL_PATH, CV_DIR)
    model, spec, _ = load_scorer(paths)  # one checkpoint, or the fold models' ensemble as one graph
    scored = MODEL_PATH if len(paths) == 1 else f"the ensemble of {len(paths)} fold models in {CV_DIR}"
    test = SplitStore(DECODED_DIR, "test", spec.image_size, spec.preprocessing)
    data, scores = json.loads(DATA_METRICS.read_text()), json.loads(TEST_METRICS.read_text())
    sha = identity(paths)
    metadata = onnx_metadata(spec, sha, scores if scores.get("model_sha256") == sha else None)
    result = export(model, spec, test[list(range(len(test)))], EXPORT_DIR, metadata)
    write_json(EXPORT_METRICS, result)
    write_json(EXPORT_SUMMARY, export_summary(result))
    cv, external = (json.loads(p.read_text()) if p.is_file() else {} for p in (CV_METRICS, EXTERNAL_METRICS))
    write_text(MODEL_CARD, model_card(params, spec, data, scores, result, cv, external))
    print(
        f"export: {EXPORT_DIR}/model.onnx and model.pt2 match {scored} on {result['images']} test "
        f"images (max abs logit difference: ONNX {result['onnx_max_abs_diff']:.1e}, .pt2 "
        f"{result['pt2_max_abs_diff']:.1e}); {MODEL_CARD} written"
    )


if __name__ == "__main__":
    main()
