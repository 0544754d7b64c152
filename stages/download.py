"""Stage `download`: fetch the dataset named by `data.source` into data/raw."""

from __future__ import annotations

from cxr.atomic import atomic_dir
from cxr.config import load_params
from cxr.data.grouping import Grouping
from cxr.data.sources import write_dataset
from cxr.data.splits import count_images
from cxr.paths import RAW_DIR
from cxr.stage import stage


@stage("download")
def main() -> None:
    params = load_params()
    v = params.verify  # split assignment decodes every image: the same limits and policy as verify
    grouping = Grouping(v.near_duplicate_bits, v.max_pixels, skip_corrupt=v.on_corrupt == "skip")
    with atomic_dir(RAW_DIR) as tmp:
        what = write_dataset(params.data, params.seed, tmp, grouping)
    print(f"download: {what} -> {RAW_DIR}/")
    for split, per_class in count_images(RAW_DIR).items():
        print(f"  {split:5s} " + "  ".join(f"{cls}={n}" for cls, n in per_class.items()))


if __name__ == "__main__":
    main()
