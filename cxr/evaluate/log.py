"""The plot log of scoring stages (evaluate, external): the one place that owns dvclive there.
Curves carry the class they belong to (the templates write it on the chart), and dvclive's own
metrics.json is removed on close: the stages write their scores themselves."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from dvclive import Live

from cxr.atomic import write_text


class PlotLog:
    """Curves, confusion matrices and images of one scoring stage, under its dvclive folder."""

    def __init__(self, live: Live):
        self.live = live

    def curve(self, kind: str, truth, scores, name: str, label: str, **options) -> None:
        """dvclive's `kind` curve (roc, precision_recall, calibration) at plots/sklearn/`name`, every
        row carrying `class` = `label` (one chart per file, the label written on it), with the ROC AUC
        or the average precision beside the label, and for precision-recall the `baseline` (prevalence)."""
        from sklearn.metrics import average_precision_score, roc_auc_score

        self.live.log_sklearn_plot(kind, truth, scores, name=name, **options)
        path = Path(self.live.plots_dir) / "sklearn" / name
        rows = json.loads(path.read_text())
        extra: dict = {}
        if kind == "roc":
            label = f"{label} (AUC {roc_auc_score(truth, scores):.3f})"
        elif kind == "precision_recall":
            label = f"{label} (AP {average_precision_score(truth, scores):.3f})"
            extra["baseline"] = round(float(np.mean(truth)), 6)  # the precision of guessing: the prevalence
        for row in rows[kind]:
            row["class"] = label
            row.update(extra)
        write_text(path, json.dumps(rows, indent=4))

    def confusion(self, truth: list[str], predicted: list[str], name: str = "confusion_matrix.json") -> None:
        self.live.log_sklearn_plot("confusion_matrix", truth, predicted, name=name)

    def table(self, name: str, rows: list[dict]) -> None:
        """Rows of numbers at plots/custom/`name` (a `dvc plots` data file; dvc.yaml's `plots:` draws it)."""
        path = Path(self.live.plots_dir) / "custom" / name
        write_text(path, json.dumps(rows, indent=1))

    def image(self, name: str, image) -> None:
        self.live.log_image(name, image)


@contextlib.contextmanager
def plot_log(live_dir: Path) -> Iterator[PlotLog]:
    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        yield PlotLog(live)
    (Path(live_dir) / "metrics.json").unlink(missing_ok=True)  # dvclive's summary; the scores have their own
