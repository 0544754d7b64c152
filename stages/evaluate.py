"""Stage `evaluate`: score the best checkpoint on the test split; write metrics, predictions and plots."""

from __future__ import annotations

from cxr.atomic import write_json
from cxr.config import load_params
from cxr.evaluate.run import evaluate
from cxr.model.ensemble import scored_paths
from cxr.paths import (
    CV_DIR,
    DECODED_DIR,
    EVAL_LIVE_DIR,
    MODEL_PATH,
    PREDICTIONS,
    RAW_DIR,
    SUBMISSION,
    TEST_METRICS,
    TEST_SUMMARY,
)
from cxr.stage import stage
from cxr.summaries import headline_text, test_summary


@stage("evaluate")
def main() -> None:
    params = load_params()
    paths = scored_paths(params.evaluate.ensemble, MODEL_PATH, CV_DIR)
    scores = evaluate(params, paths, DECODED_DIR, RAW_DIR, TEST_METRICS, PREDICTIONS, EVAL_LIVE_DIR, SUBMISSION)
    write_json(TEST_SUMMARY, test_summary(scores))
    print(f"evaluate: test {headline_text(scores)} on {scores['n']} images -> {TEST_METRICS}, {PREDICTIONS}")
    for cls, s in scores["screening"].items():
        threshold = f" at threshold {s['threshold']:.3f}" if s["threshold"] is not None else ""
        parts = [_with_interval(s, k) for k in ("sensitivity", "specificity", "roc_auc") if s[k] is not None]
        print(f"  {cls}{threshold}: " + ", ".join(parts) + f", ECE {s['ece']:.3f}")


def _with_interval(report: dict, key: str) -> str:
    low, high = report.get(f"{key}_ci95_low"), report.get(f"{key}_ci95_high")
    return f"{key} {report[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


if __name__ == "__main__":
    main()
