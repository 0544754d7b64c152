"""Write the project's plot templates into .dvc/plots/, where `template:` names in dvc.yaml resolve.

    python scripts/build_plot_templates.py                 # the Vega-Lite templates (from dvc_render's own)
    python scripts/build_plot_templates.py --vendor DIR    # and offline.html, inlining DIR/node_modules/...

The Vega-Lite templates start from DVC's built-in ones (dvc_render.vega_templates) and change only what
the plots need: epochs counted from 1 (`step + 1`), the learning rate on a log scale, a dashed diagonal
reference (ROC: chance, calibration: perfect calibration), the class a curve belongs to written on it,
and confusion-matrix values shown without a checkbox. offline.html is a `dvc plots show` page template
with vega, vega-lite and vega-embed inlined (all BSD-3-Clause, from the npm registry), so the page draws
with no network; .dvc/config points `plots.html_template` at it. Build DIR with
`npm install --prefix DIR vega@5 vega-lite@5 vega-embed@6` (the major versions DVC's page loads).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from dvc_render.vega_templates import ConfusionTemplate, NormalizedConfusionTemplate, SimpleLinearTemplate

OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots"
X, Y = "<DVC_METRIC_X>", "<DVC_METRIC_Y>"
STYLE = (  # image plots wrap in `dvc plots diff`; empty plots (no data for this task) take no room
    "<style>table { border-spacing: 15px; }\n"
    "/* image plots: revisions wrap instead of running off the page (dvc_render sets nowrap inline) */\n"
    'div[style*="nowrap"] { white-space: normal !important; }\n'
    'div[style*="nowrap"] img { max-width: calc(100vw - 60px); height: auto; }\n'
    "/* a plot with no data for this task (an empty spec) draws a 0 x 0 canvas: hide it and its actions menu */\n"
    '.vega-embed:has(canvas[width="0"]) { display: none; }</style>'
)
LIBRARIES = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")


def epoch(log_y: bool = False) -> dict:
    """A curve over epochs: x is dvclive's 0-based step shown as the 1-based epoch the logs print."""
    t = copy.deepcopy(SimpleLinearTemplate.DEFAULT_CONTENT)
    t["transform"] = [{"calculate": f"toNumber(datum['{X}']) + 1", "as": "epoch"}]  # TSV values are strings
    t["mark"]["point"] = True
    t["encoding"]["x"] = {"field": "epoch", "type": "quantitative", "title": "epoch", "axis": {"tickMinStep": 1}}
    if log_y:
        t["encoding"]["y"]["scale"] = {"type": "log"}
    return t


def curve(diagonal: bool, baseline: bool = False) -> dict:
    """A per-class curve (ROC, precision-recall, calibration) on [0, 1] x [0, 1], the class written
    in the corner (with the AUC or AP evaluate wrote into it), and the dashed reference it is read against:
    the diagonal for ROC and calibration, for precision-recall a level line at the rows' `baseline` (the
    class's prevalence: the precision of guessing)."""
    t = copy.deepcopy(SimpleLinearTemplate.DEFAULT_CONTENT)
    line = {"params": t.pop("params"), "mark": t.pop("mark"), "encoding": t.pop("encoding")}
    for axis in ("x", "y"):
        line["encoding"][axis]["scale"] = {"domain": [0, 1]}
    label = {
        "transform": [{"window": [{"op": "row_number", "as": "row"}]}, {"filter": "datum.row == 1"}],
        "mark": {"type": "text", "align": "left", "baseline": "top", "fontWeight": "bold"},
        "encoding": {"text": {"field": "class"}, "x": {"value": 4}, "y": {"value": 4}},
    }
    layers = [line, label]
    if diagonal:
        reference = {
            "data": {"values": [{"ref": 0}, {"ref": 1}]},
            "mark": {"type": "line", "strokeDash": [4, 4], "color": "gray", "opacity": 0.7},
            "encoding": {"x": {"field": "ref", "type": "quantitative"}, "y": {"field": "ref", "type": "quantitative"}},
        }
        layers.insert(0, reference)
    if baseline:
        level = {
            "mark": {"type": "rule", "strokeDash": [4, 4], "color": "gray", "opacity": 0.7},
            "encoding": {"y": {"aggregate": "min", "field": "baseline", "type": "quantitative"}},
        }
        layers.insert(0, level)
    t["layer"] = layers
    return t


def counts_always(template: dict, field: str, fmt: str | None) -> dict:
    """DVC's confusion template with its values drawn on every cell (no `showValues` checkbox)."""
    t = copy.deepcopy(template)
    t["params"] = [p for p in t.get("params", []) if p.get("name") != "showValues"]
    if not t["params"]:
        del t["params"]
    for layer in t["spec"]["layer"]:
        if layer.get("mark") == "text":
            layer["encoding"]["text"] = {"field": field, "type": "quantitative", **({"format": fmt} if fmt else {})}
    return t


def html(vendor: Path) -> str:
    """A `dvc plots show` page template with the three libraries inlined."""
    scripts = []
    for lib in LIBRARIES:
        source = (vendor / "node_modules" / lib).read_text(encoding="utf8")
        for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
            assert placeholder not in source, f"{lib} holds {placeholder}, which dvc_render would replace"
        scripts.append(f"<script>/* {lib}, BSD-3-Clause */\n{source}\n</script>")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>DVC Plot</title>\n'
        + "\n".join(scripts)
        + "\n" + STYLE + "\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n"
    )


def label_efficiency() -> dict:
    """sweeps/label_efficiency.py's rows: test accuracy and macro F1 against the share of the training labels, one
    line per starting point, each point with its 95 % interval as a vertical rule."""

    def panel(y: str, low: str, high: str, title: str) -> dict:
        x = {"field": "fraction", "type": "quantitative", "title": "share of the training labels",
             "scale": {"type": "log"}, "axis": {"values": [0.1, 0.25, 0.5, 1], "format": "%"}}  # fmt: skip
        colour = {"field": "start", "type": "nominal", "title": "start"}
        return {
            "width": 320,
            "height": 260,
            "layer": [
                {"mark": {"type": "line", "point": True},
                 "encoding": {"x": x, "y": {"field": y, "type": "quantitative", "title": title,
                                            "scale": {"zero": False}}, "color": colour}},
                {"mark": {"type": "rule", "strokeWidth": 2, "opacity": 0.6},
                 "encoding": {"x": x, "y": {"field": low, "type": "quantitative"}, "y2": {"field": high},
                              "color": colour}},
            ],
        }  # fmt: skip

    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "hconcat": [
            panel("accuracy", "accuracy_lo", "accuracy_hi", "test accuracy (95% exact interval)"),
            panel("f1_macro", "f1_macro_lo", "f1_macro_hi", "test macro F1 (95% bootstrap interval)"),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vendor", type=Path, help="an `npm install --prefix` folder holding vega, vega-lite, vega-embed"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    templates = {
        "epoch": epoch(),
        "epoch_log": epoch(log_y=True),
        "curve": curve(diagonal=False),
        "curve_diagonal": curve(diagonal=True),
        "curve_baseline": curve(diagonal=False, baseline=True),
        "confusion_counts": counts_always(ConfusionTemplate.DEFAULT_CONTENT, "xy_count", None),
        "confusion_normalized_counts": counts_always(
            NormalizedConfusionTemplate.DEFAULT_CONTENT, "percent_of_y", ".2f"
        ),
        "label_efficiency": label_efficiency(),
    }
    for name, content in templates.items():
        (OUT / f"{name}.json").write_text(json.dumps(content, indent=2) + "\n")
    if args.vendor:
        (OUT / "offline.html").write_text(html(args.vendor), encoding="utf8")
    print(f"wrote {', '.join(templates)}" + (" and offline.html" if args.vendor else "") + f" to {OUT}")


if __name__ == "__main__":
    main()
