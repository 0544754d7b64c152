"""Stage `evaluate`: score the best checkpoint on the test split; write metrics and plots."""

from __future__ import annotations

import numpy as np
import torch
from dvclive import Live

from cxr.atomic import write_json
from cxr.checkpoint import load_checkpoint
from cxr.config import load_params
from cxr.gallery import prediction_grid
from cxr.images import load_pixels, scan_split
from cxr.metrics import classification_scores
from cxr.paths import EVAL_LIVE_DIR, MODEL_PATH, RAW_DIR, TEST_METRICS
from cxr.training import predict_logits, select_device


def main() -> None:
    params = load_params().evaluate
    device = select_device()
    model, spec, checkpoint = load_checkpoint(MODEL_PATH)
    model.to(device)
    test = scan_split(RAW_DIR, "test", spec.classes)
    pixels = load_pixels(test, spec.image_size)
    probs = torch.softmax(predict_logits(model, pixels, params.batch_size, device), 1).numpy()
    labels = np.asarray(test.labels)

    scores = classification_scores(labels, probs, spec.classes)
    scores["checkpoint_epoch"] = checkpoint["epoch"]
    write_json(TEST_METRICS, scores)

    with Live(dir=str(EVAL_LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        names = np.asarray(spec.classes)
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[probs.argmax(1)].tolist())
        for i, cls in enumerate(spec.classes):
            live.log_sklearn_plot("roc", (labels == i).astype(int), probs[:, i], name=f"roc/{cls}.json")
        if params.grid_images:
            grid = prediction_grid(test.files, labels, probs, spec.classes, params.grid_images)
            live.log_image("predictions.png", grid)
    # dvclive always writes a summary file; the test scores have their own, metrics/test.json
    (EVAL_LIVE_DIR / "metrics.json").unlink(missing_ok=True)
    print(
        f"evaluate: test accuracy {scores['accuracy']:.4f}, macro F1 {scores['f1_macro']:.4f} "
        f"on {scores['n']} images -> {TEST_METRICS}"
    )


if __name__ == "__main__":
    main()
