"""Stage `train`: fine-tune a torchvision CNN on the decoded images and keep the best checkpoint.

With `train.nproc` > 1 the stage starts itself again under torchrun (DistributedDataParallel);
run under torchrun directly (`torchrun --nproc_per_node N -m stages.train`, or with the
rendezvous flags of a multi-node job), it joins the process group torchrun describes.
"""

from __future__ import annotations

import os
import sys

from cxr.config import load_params
from cxr.stage import stage
from cxr.train.distributed import relaunch
from cxr.train.run import train


@stage("train")
def main() -> None:
    params = load_params()
    if params.train.nproc > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(relaunch(params.train.nproc, "stages.train"))
    train(params)


if __name__ == "__main__":
    main()
