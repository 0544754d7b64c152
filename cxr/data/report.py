"""What `verify` found, shaped for its two outputs: metrics/data.json and a readable Markdown report."""

from __future__ import annotations

from cxr.data.verify import VerifyReport


def data_metrics(found: VerifyReport) -> dict:
    """metrics/data.json: images per split and class, leak counts, and the files verify excluded."""
    counts = found.counts
    return {
        "total": sum(sum(c.values()) for c in counts.values()),
        **{split: {"total": sum(c.values()), **c} for split, c in counts.items()},
        "duplicate_groups": {
            "within_split": len(found.duplicates_within),
            "across_splits": len(found.duplicates_across),
        },
        "near_duplicate_pairs": {"within_split": len(found.near_within), "across_splits": len(found.near_across)},
        "patients_across_splits": len(found.patients_across),
        "excluded": found.excluded,  # unreadable files skipped by verify.on_corrupt: skip; train/evaluate skip them
    }


def render_report(report: VerifyReport, root: str) -> str:
    """The Markdown report: counts per split and class, modes, sizes, and every finding by name."""
    classes = sorted({c for per_class in report.counts.values() for c in per_class})
    lines = [f"# Dataset report: {root}", "", "| split | " + " | ".join(classes) + " | total |"]
    lines.append("|---" * (len(classes) + 2) + "|")
    for split, per_class in report.counts.items():
        cells = [str(per_class.get(c, 0)) for c in classes]
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {sum(per_class.values())} |")
    lines += ["", "Image modes: " + ", ".join(f"{m} {n}" for m, n in report.modes.items())]
    if report.sizes:
        (w0, h0), (w1, h1) = report.sizes
        lines.append(f"Sizes: from {w0}x{h0} to {w1}x{h1} pixels")
    sections = [
        ("Unreadable files excluded (verify.on_corrupt: skip)", report.excluded),
        ("Identical images across splits (leaks)", [" = ".join(g) for g in report.duplicates_across]),
        ("Near duplicates across splits (leaks)", [" ~ ".join(g) for g in report.near_across]),
        ("Patients in several splits (leaks)", [f"{p}: {', '.join(s)}" for p, s in report.patients_across.items()]),
        ("Identical images within a split", [" = ".join(g) for g in report.duplicates_within]),
        ("Near duplicates within a split", [" ~ ".join(g) for g in report.near_within]),
    ]
    for title, items in sections:
        lines += ["", f"## {title}: {len(items)}"] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"
