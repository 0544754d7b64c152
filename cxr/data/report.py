"""A readable Markdown report of what `verify` found, written beside metrics/data.json."""

from __future__ import annotations

from cxr.data.verify import VerifyReport


def render_report(report: VerifyReport, root: str) -> str:
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
