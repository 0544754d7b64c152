"""Progress a person can read wherever the output goes.

Bars (tqdm) only on a terminal: in `dvc queue logs`, CI logs and redirected files each redraw is a
carriage return, pages of them; there the stages' own lines (one per epoch, one per step) are the
progress. The environment variable CXR_PROGRESS=1 forces bars, CXR_PROGRESS=0 hides them; like the
other runtime settings it changes no result, so it is not a param (DVC reruns nothing for it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

PROGRESS_ENV = "CXR_PROGRESS"


def bars_wanted() -> bool:
    """CXR_PROGRESS=1/0 when set; otherwise whether stderr (where tqdm draws) is a terminal."""
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress(iterable=None, **options) -> tqdm:
    """tqdm(iterable, **options), drawn only where bars are wanted (see `bars_wanted`)."""
    options["disable"] = bool(options.get("disable")) or not bars_wanted()
    return tqdm(iterable, **options)


def steps(stage: str) -> Callable[[str], None]:
    """A logger of a stage's steps: each call prints `stage: <seconds since the first call> s: message`."""
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"{stage}: {time.perf_counter() - start:5.1f} s: {message}", flush=True)

    return say
