"""Stage `crossval`: with data.folds = k > 0, train and evaluate once per fold; write metrics/cv.json."""

from __future__ import annotations

import shutil

from cxr.atomic import write_json
from cxr.config import load_params
from cxr.paths import CV_DIR, CV_FOLDS_PLOT, CV_KEPT_DIR, CV_METRICS, CV_SUMMARY, DECODED_DIR, RAW_DIR
from cxr.stage import stage
from cxr.summaries import cv_summary
from cxr.validation.crossval import FOLD_METRICS, cross_validate


@stage("crossval")
def main() -> None:
    params = load_params()
    shutil.rmtree(CV_DIR, ignore_errors=True)
    CV_DIR.mkdir(parents=True)
    result = cross_validate(params, RAW_DIR, DECODED_DIR, CV_DIR, CV_METRICS, CV_KEPT_DIR)
    write_json(CV_SUMMARY, cv_summary(result))
    # one bar per fold, named by its source in leave-one-source-out
    names = [f.get("source") or f"fold {f['fold'] + 1}" for f in result["folds"]]
    rows = [{"fold": name, **{k: f[k] for k in FOLD_METRICS}} for name, f in zip(names, result["folds"], strict=True)]
    write_json(CV_FOLDS_PLOT, rows)
    if not result["k"]:
        (CV_DIR / "README").write_text("data.folds is 0: cross-validation is off\n")
        print("crossval: data.folds is 0; nothing to do")
        return
    spread = ", ".join(f"{k} {result[f'{k}_mean']:.4f} +- {result[f'{k}_std']:.4f}" for k in FOLD_METRICS)
    print(f"crossval: {result['k']} folds ({result['protocol']}): {spread} -> {CV_METRICS}")


if __name__ == "__main__":
    main()
