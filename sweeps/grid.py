"""Queue the comparison grid people run by hand, run it, and print the comparison table.

    python -m sweeps.grid                     # queue the grid (real data: ImageNet weights)
    python -m sweeps.grid --demo --run -j 1   # small, offline version on the demo phantoms
    python -m sweeps.grid --dry-run           # print the `dvc exp run --queue` commands only

Task 1: frozen CNN + new FC head, two head widths, three learning rates, VGG16 and ResNet18.
Task 2: fine-tuned fully, partly frozen (the published layer lists) or with the head frozen;
        VGG16 also keeping its pretrained 4096-4096 classifier with only the last layer replaced.
Part 2: covid/pneumonia/normal as three labels, BCE-with-logits against focal loss, lr raised
        from 1e-4 to 1e-3 after the first epochs (a step schedule with factor 10).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import time

RESNET_PARTIAL = "[conv1,bn1,layer1,layer2]"
VGG_PARTIAL = "[0,2,5,10,24,28]"


def grid(weights: str) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) for every run of the comparison."""
    runs = []
    for arch in ("resnet18", "vgg16"):
        for hidden in (500, 2000):
            for lr in (1e-3, 1e-4, 1e-5):
                runs.append(
                    (
                        f"t1-{arch}-h{hidden}-lr{lr:g}",
                        [
                            f"train.arch={arch}",
                            "train.freeze=backbone",
                            f"train.head.hidden=[{hidden}]",
                            f"train.lr={lr}",
                        ],
                    )
                )
    task2 = {
        "resnet18": {"full": "none", "partial": RESNET_PARTIAL, "cnn-only": "head"},
        "vgg16": {"full": "none", "partial": VGG_PARTIAL, "cnn-only": "head"},
    }
    for arch, modes in task2.items():
        for label, freeze in modes.items():
            runs.append((f"t2-{arch}-{label}", [f"train.arch={arch}", f"train.freeze={freeze}", "train.lr=0.001"]))
    runs.append(
        (
            "t2-vgg16-keep-classifier",
            [
                "train.arch=vgg16",
                "train.freeze=[features]",
                "train.head.keep_classifier=true",
                "train.head.hidden=[500]",
                "train.lr=0.001",
            ],
        )
    )
    for loss in ("bce", "focal"):
        runs.append(
            (
                f"p2-vgg16-{loss}",
                [
                    "data.task=multilabel",
                    "train.arch=vgg16",
                    f"train.loss={loss}",
                    "train.freeze=" + VGG_PARTIAL,
                    "train.lr=0.0001",
                    "train.schedule.name=step",
                    "train.schedule.milestones=[2]",
                    "train.schedule.factor=10",
                ],
            )
        )
    return [(name, [f"train.weights={weights}", *overrides]) for name, overrides in runs]


# Small enough for a laptop CPU: tiny images, few epochs, fewer phantoms.
DEMO_OVERRIDES = [
    "train.image_size=32",
    "train.epochs=4",
    "data.demo.image_size=64",
    "data.demo.train_per_class=80",
    "data.demo.val_per_class=30",
    "data.demo.test_per_class=50",
]

# Fully qualified `dvc exp show` columns; its CSV drops the file prefix where a name is unique.
COLUMNS = [
    ("params.yaml:train.arch", "arch"),
    ("params.yaml:train.freeze", "freeze"),
    ("params.yaml:train.head.hidden", "hidden"),
    ("params.yaml:train.lr", "lr"),
    ("params.yaml:train.loss", "loss"),
    ("metrics/train/metrics.json:trainable_params", "trainable"),
    ("metrics/test.json:accuracy", "test acc"),
    ("metrics/test.json:subset_accuracy", "subset acc"),
    ("metrics/test.json:f1_macro", "test F1"),
]


def _cell(row: dict, key: str) -> str:
    for column, value in row.items():
        if column == key or key.endswith(":" + column):
            return value or ""
    return ""


def dvc(*args: str, capture: bool = False) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=capture, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweeps: `dvc {' '.join(args)}` failed:\n{proc.stderr if capture else ''}")
    return proc.stdout if capture else ""


def table(names: set[str] | None = None) -> str:
    """A Markdown table of the grid's experiments from `dvc exp show --csv`."""
    shown = dvc("exp", "show", "--all-commits", "--csv", "--no-pager", capture=True)
    rows = list(csv.DictReader(io.StringIO(shown)))
    rows = [r for r in rows if r.get("Experiment") and (names is None or r["Experiment"] in names)]
    rows.sort(key=lambda r: r["Experiment"])
    lines = ["| experiment | " + " | ".join(label for _, label in COLUMNS) + " |"]
    lines.append("|" + "---|" * (len(COLUMNS) + 1))
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            value = _cell(r, key)
            if value and key.startswith("metrics/test"):
                value = f"{float(value):.3f}"
            cells.append(value or "-")
        lines.append(f"| {r['Experiment']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wait_for_queue(poll_s: float = 15.0) -> None:
    """Block until `dvc queue status` lists nothing queued or running."""
    while True:
        status = dvc("queue", "status", capture=True)
        if not any(word in status for word in ("Queued", "Running")):
            return
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="small offline version on demo phantoms (weights none)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
    parser.add_argument("--run", action="store_true", help="start the queue, wait for it, print the table")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run side by side by the queue")
    parser.add_argument("--table", action="store_true", help="only print the table of finished experiments")
    args = parser.parse_args(argv)

    runs = grid("none" if args.demo else "imagenet")
    names = {name for name, _ in runs}
    if args.table:
        print(table(names))
        return
    for name, overrides in runs:
        sets = [arg for o in overrides + (DEMO_OVERRIDES if args.demo else []) for arg in ("-S", o)]
        command = ["exp", "run", "--queue", "-n", name, *sets]
        print("dvc " + " ".join(f"'{c}'" if "[" in c else c for c in command))
        if not args.dry_run:
            dvc(*command)
    if args.run and not args.dry_run:
        dvc("queue", "start", "-j", str(args.jobs))
        wait_for_queue()
        print(table(names))


if __name__ == "__main__":
    main()
