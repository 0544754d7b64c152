"""Stage `download`: fetch (here: generate) the dataset into data/raw."""

from __future__ import annotations

from cxr.atomic import atomic_dir
from cxr.cli import stage
from cxr.config import load_params
from cxr.demo_data import write_demo_dataset
from cxr.paths import RAW_DIR


@stage("download")
def main() -> None:
    params = load_params()
    with atomic_dir(RAW_DIR) as tmp:
        counts = write_demo_dataset(tmp, params.data, params.seed)
    total = sum(sum(c.values()) for c in counts.values())
    print(f"download: wrote {total} synthetic {params.data.task} demo images to {RAW_DIR}/")
    for split, per_class in counts.items():
        print(f"  {split:5s} " + "  ".join(f"{cls}={n}" for cls, n in per_class.items()))


if __name__ == "__main__":
    main()
