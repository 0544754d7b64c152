"""Stage `verify`: check the splits in data/raw and write metrics/data.json and its readable report."""

from __future__ import annotations

from pathlib import Path

from cxr.atomic import write_json, write_text
from cxr.config import Params, load_params
from cxr.data.report import data_metrics, render_report
from cxr.data.shortcuts import audit
from cxr.data.splits import DatasetError
from cxr.data.verify import verify_splits
from cxr.paths import DATA_METRICS, DATA_REPORT, DATA_SUMMARY, RAW_DIR
from cxr.stage import stage
from cxr.summaries import data_summary


def verify(params: Params, raw_dir: Path = RAW_DIR, metrics: Path = DATA_METRICS, report: Path = DATA_REPORT) -> dict:
    """Verify `raw_dir` under params.verify; write the metrics and the report; return the metrics."""
    v = params.verify
    found = verify_splits(
        raw_dir, v.min_per_class, v.max_leaks, v.max_pixels, v.near_duplicate_bits, dict(v.expected),
        v.on_corrupt == "skip",
    )  # fmt: skip
    shortcut = audit(found.appearance, params.seed)
    shaped = data_metrics(found, shortcut)
    write_json(metrics, shaped)
    write_text(report, render_report(found, str(raw_dir), shortcut, v.max_shortcut_accuracy))
    if shortcut and shortcut["balanced_accuracy"] > v.max_shortcut_accuracy:
        loud = (
            f"verify: SHORTCUT: the labels can be predicted without looking at the lungs: image properties alone "
            f"reach balanced accuracy {shortcut['balanced_accuracy']:.3f} (chance {shortcut['chance']:.3f}), "
            f"most of all `{shortcut['most_telling']}`; see {report}"
        )
        if v.on_shortcut == "fail":
            raise DatasetError(loud + " (verify.on_shortcut: fail)")
        print(loud)
    if found.ignored:
        print(
            f"verify: WARNING: {len(found.ignored)} files are not images by their suffix and are left out: "
            + ", ".join(found.ignored[:10]) + (" ..." if len(found.ignored) > 10 else "")
        )  # fmt: skip
    for kind, groups in (("within a split", found.duplicates_within), ("across splits", found.duplicates_across)):
        for group in groups:
            print(f"verify: identical images {kind}: {' = '.join(group)}")
    print(f"verify: {shaped['total']} images in {len(found.counts)} splits are readable; see {metrics} and {report}")
    return shaped


@stage("verify")
def main() -> None:
    write_json(DATA_SUMMARY, data_summary(verify(load_params())))


if __name__ == "__main__":
    main()
