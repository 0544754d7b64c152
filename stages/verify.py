"""Stage `verify`: check the splits in data/raw and write metrics/data.json."""

from __future__ import annotations

from cxr.atomic import write_json
from cxr.cli import stage
from cxr.config import load_params
from cxr.paths import DATA_METRICS, RAW_DIR
from cxr.verification import verify_splits


@stage("verify")
def main() -> None:
    params = load_params()
    counts = verify_splits(RAW_DIR, params.verify.min_per_class)
    report = {
        "total": sum(sum(c.values()) for c in counts.values()),
        **{split: {"total": sum(c.values()), **c} for split, c in counts.items()},
    }
    write_json(DATA_METRICS, report)
    print(f"verify: {report['total']} images in {len(counts)} splits are readable; counts in {DATA_METRICS}")


if __name__ == "__main__":
    main()
