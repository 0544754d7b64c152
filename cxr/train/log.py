"""The run log: one place that owns dvclive for training. The first process writes the curves
(metrics/train/plots) and the summary; the others log to nothing. On resume the log continues at
the epoch the training state holds, with the rows of any epoch it does not hold dropped first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dvclive import Live

from cxr.atomic import write_text


def trim_curves(live_dir: Path, start: int) -> None:
    """Drop every curve row of an epoch the training state does not hold (step >= `start`): a run
    killed after logging an epoch but before saving it repeats that epoch on resume, and its rows
    would otherwise appear twice."""
    for curve in sorted((Path(live_dir) / "plots").rglob("*.tsv")):
        header, *rows = curve.read_text().splitlines()
        kept = [row for row in rows if int(row.split("\t", 1)[0]) < start]
        if len(kept) < len(rows):
            write_text(curve, "\n".join([header, *kept]) + "\n")


class RunLog:
    """Per-epoch curves and a summary; `live` is None on processes that log nothing."""

    def __init__(self, live: Live | None):
        self.live = live

    def value(self, name: str, value: float) -> None:
        """A number that is not a curve (trainable parameters)."""
        if self.live is not None:
            self.live.log_metric(name, value, plot=False)

    def epoch(self, values: dict[str, float]) -> None:
        """One epoch's row of every curve, then the next step."""
        if self.live is not None:
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.next_step()

    def summary(self, key: str, values: dict) -> None:
        if self.live is not None:
            self.live.summary.setdefault(key, {}).update(values)


@contextlib.contextmanager
def run_log(live_dir: Path, start: int, enabled: bool) -> Iterator[RunLog]:
    """The run log of `live_dir`, continuing after `start` finished epochs; a no-op when not `enabled`."""
    if not enabled:
        yield RunLog(None)
        return
    if start > 0:
        trim_curves(live_dir, start)
    with Live(dir=str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.step = start  # dvclive's own resume skips step 0; the training state knows the truth
        yield RunLog(live)
