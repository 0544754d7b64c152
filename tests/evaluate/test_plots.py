"""The charts say what their titles say: the values `dvc plots show` would draw are computed from the
rendered Vega-Lite spec (its data and transforms) and compared with the figures evaluate reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import yaml

from tests.conftest import REPO

CONFUSION = "metrics/eval/plots/sklearn/confusion_matrix.json"


def rendered(tmp_path, rows: list[dict]) -> dict:
    """`dvc plots show --json` of the project's plot definitions over a confusion file holding `rows`."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc/plots", tmp_path / ".dvc/plots")
    (tmp_path / CONFUSION).parent.mkdir(parents=True)
    (tmp_path / CONFUSION).write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out)["data"]


def displayed_cells(spec: dict) -> dict[tuple[str, str], float]:
    """(row value, column value) -> the number the normalised template writes on that cell: its count
    over the total of the field its `joinaggregate` groups by, as Vega-Lite computes it."""
    transforms = spec["spec"]["transform"]
    count_by = next(t["aggregate"][0]["as"] for t in transforms if "aggregate" in t)
    join = next(t for t in transforms if "joinaggregate" in t)
    group = join["groupby"][0]
    row, column = spec["spec"]["encoding"]["y"]["field"], spec["spec"]["encoding"]["x"]["field"]
    counts = Counter((d[row], d[column]) for d in spec["data"]["values"])
    totals = Counter()
    for (r, c), n in counts.items():
        totals[r if group == row else c] += n
    assert count_by == "xy_count" and join["joinaggregate"][0]["field"] == count_by
    return {(r, c): n / totals[r if group == row else c] for (r, c), n in counts.items()}


def test_the_normalised_confusion_matrix_shows_sensitivity_per_true_class(tmp_path):
    # 7 of 10 infected found (sensitivity 0.70); 5 of 20 normal called infected, so the PPV of
    # infected is 7/12 = 0.58: a chart normalised per predicted class would show 0.58
    counts = {("infected", "infected"): 7, ("infected", "normal"): 3, ("normal", "infected"): 5,
              ("normal", "normal"): 15}  # fmt: skip
    rows = [{"actual": a, "predicted": p} for (a, p), n in counts.items() for _ in range(n)]
    chart = rendered(tmp_path, rows)["Test confusion matrix (normalised per true class)"][0]["content"]
    assert chart["spec"]["encoding"]["y"]["field"] == "actual"  # rows are the true classes
    cells = displayed_cells(chart)
    assert cells[("infected", "infected")] == 7 / 10  # sensitivity, not the PPV 7/12
    assert cells[("normal", "normal")] == 15 / 20  # specificity of infected = sensitivity of normal
    for true in ("infected", "normal"):
        assert sum(v for (r, _), v in cells.items() if r == true) == 1.0  # each row sums to 1


def test_roc_and_precision_recall_say_their_auc_and_draw_the_prevalence(tmp_path):
    """Issue 23, item 10: the ROC legend had no AUC, precision-recall no baseline. The label written on each
    chart carries the AUC (AP), and precision-recall draws a dashed level at the class's prevalence."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from cxr.evaluate.log import plot_log

    rng = np.random.default_rng(0)
    truth = (rng.random(80) < 0.25).astype(int)
    scores = np.clip(truth * 0.4 + rng.random(80) * 0.6, 0, 1)
    live = tmp_path / "metrics/eval"
    with plot_log(live) as log:
        log.curve("roc", truth, scores, "roc/infected.json", "infected")
        log.curve("precision_recall", truth, scores, "precision_recall/infected.json", "infected")
    roc = json.loads((live / "plots/sklearn/roc/infected.json").read_text())["roc"]
    pr = json.loads((live / "plots/sklearn/precision_recall/infected.json").read_text())["precision_recall"]
    assert {r["class"] for r in roc} == {f"infected (AUC {roc_auc_score(truth, scores):.3f})"}
    assert {r["class"] for r in pr} == {f"infected (AP {average_precision_score(truth, scores):.3f})"}
    assert {r["baseline"] for r in pr} == {round(truth.mean(), 6)}

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc/plots", tmp_path / ".dvc/plots")
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    (spec,) = json.loads(out)["data"]["metrics/eval/plots/sklearn/precision_recall/infected.json"]
    content = spec["content"]
    rules = [layer for layer in content["layer"] if (layer.get("mark") or {}).get("type") == "rule"]
    assert rules and rules[0]["encoding"]["y"]["field"] == "baseline"
    assert {d["baseline"] for d in content["data"]["values"]} == {round(truth.mean(), 6)}


def test_the_offline_page_wraps_image_plots_of_several_revisions():
    """Issue 23, item 10: dvc_render lays the revisions of an image plot side by side with `nowrap`, so two
    1280-px Grad-CAM galleries in `dvc plots diff` ran off the page; the page's style lets them wrap."""
    from scripts.build_plot_templates import STYLE

    page = (REPO / ".dvc/plots/offline.html").read_text(encoding="utf8")
    assert STYLE in page and 'div[style*="nowrap"] { white-space: normal !important; }' in STYLE
    # and a plot with no data for the task (DVC's empty spec, a 0 x 0 canvas) leaves no empty "..." menu behind
    assert '.vega-embed:has(canvas[width="0"]) { display: none; }' in STYLE
