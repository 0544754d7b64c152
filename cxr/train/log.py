"""The run log: one place that owns dvclive for training. The first process writes the curves
(metrics/train/plots) and the summary; the others log to nothing. On resume the log continues at
the epoch the training state holds, from the curves that state holds (`read_curves` at each save)."""

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


def read_curves(live_dir: Path) -> dict[str, str]:
    """Every curve file under `live_dir`/plots, by its path under `live_dir`: kept in the training state so
    that a resumed run continues the curves of the very run it resumes."""
    root = Path(live_dir) / "plots"
    return {p.relative_to(live_dir).as_posix(): p.read_text() for p in sorted(root.rglob("*.tsv"))}


def restore_curves(live_dir: Path, curves: dict[str, str]) -> None:
    """Put back the curves a training state holds, dropping any other run's: after a kill, `dvc exp run`
    may leave the killed run's rows (or the committed run's) beside the state that is resumed."""
    live_dir = Path(live_dir)
    for curve in sorted((live_dir / "plots").rglob("*.tsv")):
        if curve.relative_to(live_dir).as_posix() not in curves:
            curve.unlink()
    for rel, text in curves.items():
        if rel.startswith("plots/") and ".." not in Path(rel).parts and rel.endswith(".tsv"):
            (live_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            write_text(live_dir / rel, text)


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
def run_log(live_dir: Path, start: int, enabled: bool, curves: dict[str, str] | None = None) -> Iterator[RunLog]:
    """The run log of `live_dir`, continuing after `start` finished epochs with the `curves` the resumed
    training state holds (older states hold none: the rows on disk are trimmed); a no-op when not `enabled`."""
    if not enabled:
        yield RunLog(None)
        return
    if start > 0 and curves is not None:
        restore_curves(live_dir, curves)
    if start > 0:
        trim_curves(live_dir, start)
    with Live(dir=str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.step = start  # dvclive's own resume skips step 0; the training state knows the truth
        yield RunLog(live)
