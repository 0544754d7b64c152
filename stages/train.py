"""Stage `train`: fine-tune a torchvision CNN on the decoded images and keep the best checkpoint.

With `train.nproc` > 1 the stage starts itself again under torchrun (DistributedDataParallel);
run under torchrun directly (`torchrun --nproc_per_node N -m stages.train`, or with the
rendezvous flags of a multi-node job), it joins the process group torchrun describes.
"""

from __future__ import annotations

import os
import sys

from cxr.atomic import write_json
from cxr.config import load_params
from cxr.paths import TRAIN_SUMMARY
from cxr.stage import stage
from cxr.summaries import train_summary
from cxr.train.distributed import Distributed, relaunch
from cxr.train.run import train


@stage("train")
def main() -> None:
    params = load_params()
    if params.train.nproc > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(relaunch(params.train.nproc, "stages.train"))
    best = train(params)
    if Distributed.from_env().is_main:  # one writer under torchrun
        write_json(TRAIN_SUMMARY, train_summary(best))


if __name__ == "__main__":
    main()
