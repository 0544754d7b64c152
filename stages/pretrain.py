"""Stage `pretrain`: self-supervised pretraining of train.arch on films without labels (cxr/train/pretrain.py)."""

from __future__ import annotations

from cxr.config import load_params
from cxr.stage import stage
from cxr.train.pretrain import pretrain


@stage("pretrain")
def main() -> None:
    pretrain(load_params())


if __name__ == "__main__":
    main()
