"""Stage `verify`: check the splits in data/raw and write metrics/data.json."""

from __future__ import annotations

from cxr.atomic import write_json, write_text
from cxr.config import load_params
from cxr.data.report import render_report
from cxr.data.verify import verify_splits
from cxr.paths import DATA_METRICS, DATA_REPORT, RAW_DIR
from cxr.stage import stage


@stage("verify")
def main() -> None:
    params = load_params()
    v = params.verify
    found = verify_splits(
        RAW_DIR,
        v.min_per_class,
        v.max_leaks,
        v.max_pixels,
        v.near_duplicate_bits,
        dict(v.expected),
        v.on_corrupt == "skip",
    )
    counts = found.counts
    report = {
        "total": sum(sum(c.values()) for c in counts.values()),
        **{split: {"total": sum(c.values()), **c} for split, c in counts.items()},
        "duplicate_groups": {
            "within_split": len(found.duplicates_within),
            "across_splits": len(found.duplicates_across),
        },
        "near_duplicate_pairs": {"within_split": len(found.near_within), "across_splits": len(found.near_across)},
        "patients_across_splits": len(found.patients_across),
        "excluded": found.excluded,  # unreadable files skipped by verify.on_corrupt: skip; train/evaluate skip them
    }
    write_json(DATA_METRICS, report)
    write_text(DATA_REPORT, render_report(found, str(RAW_DIR)))
    for kind, groups in (("within a split", found.duplicates_within), ("across splits", found.duplicates_across)):
        for group in groups:
            print(f"verify: identical images {kind}: {' = '.join(group)}")
    print(
        f"verify: {report['total']} images in {len(counts)} splits are readable; see {DATA_METRICS} and {DATA_REPORT}"
    )


if __name__ == "__main__":
    main()
