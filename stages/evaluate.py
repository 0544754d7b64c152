"""Stage `evaluate`: score the best checkpoint on the test split; write metrics and plots."""

from __future__ import annotations

import numpy as np
from dvclive import Live

from cxr.atomic import write_json
from cxr.checkpoint import load_checkpoint
from cxr.cli import stage
from cxr.config import load_params
from cxr.gallery import prediction_grid
from cxr.losses import probabilities
from cxr.metrics import classification_scores, multilabel_scores
from cxr.paths import DECODED_DIR, EVAL_LIVE_DIR, MODEL_PATH, RAW_DIR, TEST_METRICS
from cxr.store import SplitStore, StoreError
from cxr.training import Runtime, predict_logits


def log_plots(live: Live, labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], multilabel: bool) -> None:
    """Confusion matrices and one ROC curve per class (one vs rest) as dvclive plots."""
    names = np.asarray(classes)
    for i, cls in enumerate(classes):
        truth = labels[:, i] if multilabel else (labels == i)
        live.log_sklearn_plot("roc", truth.astype(int), probs[:, i], name=f"roc/{cls}.json")
        if multilabel:  # a multi-label set has no single N x N matrix: one 2 x 2 per class
            pred = probs[:, i] >= 0.5
            live.log_sklearn_plot(
                "confusion_matrix",
                np.where(truth > 0, cls, f"not {cls}").tolist(),
                np.where(pred, cls, f"not {cls}").tolist(),
                name=f"confusion/{cls}.json",
            )
    if not multilabel:
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[probs.argmax(1)].tolist())


@stage("evaluate")
def main() -> None:
    params = load_params().evaluate
    runtime = Runtime.select()
    model, spec, checkpoint = load_checkpoint(MODEL_PATH)
    runtime.prepare_model(model)
    test = SplitStore(DECODED_DIR, "test", spec.image_size)
    if test.classes != spec.classes:
        raise StoreError(f"{DECODED_DIR}: classes {list(test.classes)} differ from the model's {list(spec.classes)}")
    probs = probabilities(predict_logits(model, test, params.batch_size, runtime), spec.loss).numpy()

    if spec.multilabel:
        scores = multilabel_scores(test.labels, probs, spec.classes)
        headline = f"subset accuracy {scores['subset_accuracy']:.4f}, macro F1 {scores['f1_macro']:.4f}"
    else:
        scores = classification_scores(test.labels, probs, spec.classes)
        headline = f"accuracy {scores['accuracy']:.4f}, macro F1 {scores['f1_macro']:.4f}"
    scores["checkpoint_epoch"] = checkpoint["epoch"]
    write_json(TEST_METRICS, scores)

    with Live(dir=str(EVAL_LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        log_plots(live, test.labels, probs, spec.classes, spec.multilabel)
        if params.grid_images:
            files = [RAW_DIR / f for f in test.files]
            grid = prediction_grid(files, test.labels, probs, spec.classes, params.grid_images)
            live.log_image("predictions.png", grid)
    # dvclive always writes a summary file; the test scores have their own, metrics/test.json
    (EVAL_LIVE_DIR / "metrics.json").unlink(missing_ok=True)
    print(f"evaluate: test {headline} on {scores['n']} images -> {TEST_METRICS}")


if __name__ == "__main__":
    main()
