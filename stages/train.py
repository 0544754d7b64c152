"""Stage `train`: fine-tune a torchvision CNN on data/raw and keep the best checkpoint."""

from __future__ import annotations

from cxr.cli import stage
from cxr.config import load_params
from cxr.trainer import train


@stage("train")
def main() -> None:
    train(load_params())


if __name__ == "__main__":
    main()
