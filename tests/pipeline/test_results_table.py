"""scripts/results.py: the readable tables (issue 23, item 4), from DVC's own JSON."""

from __future__ import annotations

from scripts.results import exp_table, metric_lines


def _rev(name, lr, arch, accuracy):
    params = {"train": {"lr": lr, "arch": arch, "epochs": 10}, "seed": 42}
    metrics = {"metrics/summary/test.json": {"data": {"accuracy": accuracy, "infected": {"sensitivity": 0.9}}}}
    return {"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def test_the_experiments_table_shows_exactly_the_params_that_differ():
    """`dvc exp show --only-changed` hides a param changed in one experiment when the baseline shows it
    too; here a param is a column when any two rows differ in it, and only then."""
    baseline = _rev("main", 0.01, "resnet18", 0.95)
    baseline["experiments"] = [
        {"name": "exp-a", "revs": [_rev("exp-a", 0.0001, "resnet18", 0.9)]},
        {"name": "exp-b", "revs": [_rev("exp-b", 0.01, "vgg16", 0.97)]},
    ]
    lines = exp_table([{"rev": "workspace", "name": None, "data": None}, baseline], width=120)
    header = lines[0].split()
    assert header == ["Experiment", "train.arch", "train.lr", "accuracy", "infected.sensitivity"]
    assert [line.split()[0] for line in lines[1:]] == ["main", "exp-a", "exp-b"]
    assert lines[2].split()[1:4] == ["resnet18", "0.0001", "0.9"] and all(len(line) <= 120 for line in lines)
    assert exp_table([]) == ["no experiments (run `dvc exp run` first)"]
    narrow = exp_table([baseline], width=30)
    assert all(len(line) <= 30 for line in narrow) and narrow[0].endswith("…")


def test_metrics_one_per_line_with_their_intervals():
    shown = {"": {"data": {"metrics/summary/test.json": {"data": {
        "accuracy": 0.985, "infected": {"sensitivity": 0.97, "sensitivity_lo": 0.91, "sensitivity_hi": 0.99}}}}}}
    assert metric_lines(shown) == [
        f"{'test':9s} {'accuracy':32s} 0.985",
        f"{'test':9s} {'infected.sensitivity':32s} 0.97  (95% 0.91 to 0.99)",
    ]
