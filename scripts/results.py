"""`python -m scripts.results`: the numbers that matter, readable at 120 columns.

    python -m scripts.results            # this workspace's metrics, one per line, grouped by stage
    python -m scripts.results --exps     # experiments: the params that differ between them + the headline metrics

Plain `dvc metrics show` is one row per summary file with every metric a column (413 columns for the demo);
`dvc exp show` lists every param, and `--only-changed` drops a param that changed in one experiment only
when the baseline shows it too. This reads `dvc metrics show --json` / `dvc exp show --json` and prints
what fits: for experiments, exactly the params whose values differ between the rows shown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

HEADLINE = ("accuracy", "subset_accuracy", "f1_macro", "mean_auroc", "best_epoch", "val_f1", "cv_accuracy_mean")
SCREENED = (".sensitivity", ".specificity", ".auc")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return "-" if value is None else str(value)


def metric_lines(shown: dict) -> list[str]:
    """`dvc metrics show --json` as `stage  metric  value` lines, a metric's 95 % interval (`_lo`, `_hi`)
    beside it."""
    lines = []
    for rev in shown.values():
        for path, entry in sorted((rev.get("data") or {}).items()):
            stage = path.rsplit("/", 1)[-1].removesuffix(".json")
            flat = flatten(entry.get("data") or {})
            for key, value in flat.items():
                if key.endswith(("_lo", "_hi")) and key[:-3] in flat:
                    continue
                low, high = flat.get(f"{key}_lo"), flat.get(f"{key}_hi")
                interval = f"  (95% {_cell(low)} to {_cell(high)})" if low is not None and high is not None else ""
                lines.append(f"{stage:9s} {key:32s} {_cell(value)}{interval}")
    return lines


def _rows(nodes: list, out: list) -> list[tuple[str, dict, dict]]:
    """(name, flat params, flat metrics) of every experiment node in `dvc exp show --json`, baselines first."""
    for node in nodes or []:
        for rev in node.get("revs", [node]):
            data = rev.get("data")
            if data:
                name = rev.get("name") or str(rev.get("rev", ""))[:7]
                params = flatten({k: v.get("data") for k, v in (data.get("params") or {}).items()})
                metrics = {}
                for entry in (data.get("metrics") or {}).values():
                    metrics.update(flatten(entry.get("data") or {}))
                params = {k.removeprefix("params.yaml."): v for k, v in params.items()}
                out.append((name, params, metrics))
            _rows(rev.get("experiments"), out)
    return out


def exp_table(shown: list, width: int = 120) -> list[str]:
    """Experiments as a table: name, the params that differ between rows, then headline metrics, cut to `width`."""
    rows = _rows(shown, [])
    if not rows:
        return ["no experiments (run `dvc exp run` first)"]
    keys = sorted({k for _, p, _ in rows for k in p})
    differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for _, p, _ in rows}) > 1]
    present = {k for _, _, m in rows for k in m}
    screened = sorted(k for k in present if k.endswith(SCREENED))  # per class, without the interval bounds
    metrics = [k for k in HEADLINE if k in present] + screened
    header = ["Experiment", *differing, *metrics]
    table = [header]
    for name, p, m in rows:
        table.append([name, *(_cell(p.get(k)) for k in differing), *(_cell(m.get(k)) for k in metrics)])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if any(len(line) > width for line in lines):
        lines = [line[: width - 1] + "…" if len(line) > width else line for line in lines]
    return lines


def _dvc_json(*args: str) -> object:
    done = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"results: `dvc {' '.join(args)} --json` failed: {done.stderr.strip()}")
    return json.loads(done.stdout or "{}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--exps", action="store_true", help="experiments instead of this workspace's metrics")
    args = parser.parse_args(argv)
    width = shutil.get_terminal_size((120, 24)).columns
    lines = exp_table(_dvc_json("exp", "show"), width) if args.exps else metric_lines(_dvc_json("metrics", "show"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
