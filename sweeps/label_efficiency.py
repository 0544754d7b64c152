"""The label-efficiency curve: what each starting point is worth at 10, 25, 50 and 100 % of the training labels.

    python -m sweeps.label_efficiency                  # queue the runs (real data: the params as they stand)
    python -m sweeps.label_efficiency --demo --run -j 1  # small, offline version on the demo phantoms, then collect
    python -m sweeps.label_efficiency --collect        # the finished runs -> metrics/label_efficiency.json + plot
    python -m sweeps.label_efficiency --dry-run        # print the `dvc exp run --queue` commands only

Starts: from scratch (`train.weights: none`), from stage pretrain's backbone (`pretrain.method: simclr`,
`train.weights: pretrained`), and from torchxrayvision's X-ray weights (`txrv:densenet121-res224-all`) where that
file is already in the package's cache (it is never downloaded for a sweep). Each start at each `data.label_fraction`
is one queued DVC experiment, `le-<start>-<percent>`. `--collect` reads each finished experiment's test predictions
from its git ref (metrics/predictions.csv), scores accuracy with its exact (Clopper-Pearson) interval and macro F1
with a seeded percentile bootstrap, writes metrics/label_efficiency.json and draws it with `dvc plots show` (template
label_efficiency: one line per start, the intervals as rules) into dvc_plots/label_efficiency/index.html.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from cxr.atomic import write_json
from cxr.evaluate.screening import exact_interval
from cxr.model.xray_weights import weights_file, xrv_name
from sweeps.grid import DEMO_OVERRIDES, dvc, wait_for_queue

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
TXRV = "txrv:densenet121-res224-all"
OUT = Path("metrics/label_efficiency.json")
PLOT_DIR = Path("dvc_plots/label_efficiency")
RESAMPLES = 1000
# the grid's demo shrinkage, and a shorter pretraining (100 epochs of 160 phantoms would dominate a laptop's run)
DEMO = [*DEMO_OVERRIDES, "pretrain.epochs=30", "pretrain.batch_size=32"]


def starts(with_txrv: bool) -> list[tuple[str, list[str]]]:
    """(name, `-S` overrides) of each starting point."""
    found = [("scratch", ["train.weights=none"]),
             ("pretrained", ["pretrain.method=simclr", "train.weights=pretrained"])]  # fmt: skip
    return found + ([("txrv", [f"train.weights={TXRV}"])] if with_txrv else [])


def runs(with_txrv: bool) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) for every start at every fraction."""
    return [
        (f"le-{name}-{round(fraction * 100)}", [*overrides, f"data.label_fraction={fraction}"])
        for name, overrides in starts(with_txrv)
        for fraction in FRACTIONS
    ]


def scored(true: list[str], predicted: list[str], seed: int = 0) -> dict:
    """Accuracy with its exact interval and macro F1 with a seeded percentile-bootstrap interval (95 %)."""
    truth, guess = np.asarray(true), np.asarray(predicted)
    n, correct = len(truth), int((truth == guess).sum())
    low, high = exact_interval(correct, n)
    rng = np.random.default_rng(seed)
    labels = sorted(set(true))
    boot = [f1_score(truth[i], guess[i], labels=labels, average="macro", zero_division=0)
            for i in (rng.integers(0, n, n) for _ in range(RESAMPLES))]  # fmt: skip
    return {
        "n": n,
        "accuracy": correct / n,
        "accuracy_lo": low,
        "accuracy_hi": high,
        "f1_macro": float(f1_score(truth, guess, labels=labels, average="macro", zero_division=0)),
        "f1_macro_lo": float(np.percentile(boot, 2.5)),
        "f1_macro_hi": float(np.percentile(boot, 97.5)),
    }


def experiment_revs() -> dict[str, str]:
    """Experiment name -> its commit, for the experiments of this repository."""
    shown = dvc("exp", "show", "--all-commits", "--csv", "--no-pager", "--only-changed", capture=True)
    return {r["Experiment"]: r["rev"] for r in csv.DictReader(io.StringIO(shown)) if r.get("Experiment")}


def collect(names: list[tuple[str, list[str]]]) -> list[dict]:
    """Each finished run's test scores, from its experiment's metrics/predictions.csv."""
    revs, rows = experiment_revs(), []
    for name, overrides in names:
        if name not in revs:
            continue
        shown = subprocess.run(["git", "show", f"{revs[name]}:metrics/predictions.csv"], capture_output=True, text=True)
        if shown.returncode != 0:
            continue
        table = list(csv.DictReader(io.StringIO(shown.stdout)))
        if not table or "predicted" not in table[0]:
            continue  # a multi-label run has no single prediction per film; its curve is not drawn here
        fraction = float(next(o for o in overrides if o.startswith("data.label_fraction=")).split("=", 1)[1])
        start = name.split("-")[1]
        rows.append({"start": start, "fraction": fraction, "experiment": name,
                     **scored([r["true"] for r in table], [r["predicted"] for r in table])})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="small offline version on the demo phantoms")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
    parser.add_argument("--run", action="store_true", help="start the queue, wait for it, then collect")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run side by side by the queue")
    parser.add_argument("--collect", action="store_true", help="only collect the finished runs and draw the plot")
    args = parser.parse_args(argv)

    planned = runs(with_txrv=weights_file(xrv_name(TXRV)).is_file())
    if not args.collect:
        for name, overrides in planned:
            sets = [arg for o in overrides + (DEMO if args.demo else []) for arg in ("-S", o)]
            command = ["exp", "run", "--queue", "-n", name, *sets]
            print("dvc " + " ".join(command))
            if not args.dry_run:
                dvc(*command)
        if not args.run or args.dry_run:
            return
        dvc("queue", "start", "-j", str(args.jobs))
        wait_for_queue()
    rows = collect(planned)
    if not rows:
        sys.exit("sweeps.label_efficiency: no finished le-* experiment to collect; run the queue first")
    write_json(OUT, rows)
    PLOT_DIR.parent.mkdir(parents=True, exist_ok=True)  # dvc plots show -o makes the last folder only
    dvc("plots", "show", str(OUT), "--template", "label_efficiency", "-o", str(PLOT_DIR),
        "--title", "label efficiency: test scores by share of the training labels")  # fmt: skip
    print(json.dumps(rows, indent=1))
    print(f"{len(rows)} runs -> {OUT}; plot: {PLOT_DIR / 'index.html'}")


if __name__ == "__main__":
    main()
