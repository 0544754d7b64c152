"""Stage `features`: run a frozen backbone once over train and val, into data/features."""

from __future__ import annotations

from cxr.config import load_params
from cxr.stage import stage
from cxr.train.features import cache_features


@stage("features")
def main() -> None:
    cache_features(load_params())


if __name__ == "__main__":
    main()
