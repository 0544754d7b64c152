"""What `verify` found, shaped for its two outputs: metrics/data.json and a readable Markdown report."""

from __future__ import annotations

from cxr.data.verify import VerifyReport


def data_metrics(found: VerifyReport, shortcut: dict | None = None) -> dict:
    """metrics/data.json: images per split and class, leak counts, the files verify excluded and the
    shortcut audit's headline (cxr.data.shortcuts.audit)."""
    counts = found.counts
    headline = {k: (shortcut or {}).get(k) for k in ("balanced_accuracy", "chance", "most_telling")}
    if shortcut:
        headline["most_telling_accuracy"] = shortcut["per_property"][shortcut["most_telling"]]
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
        "shortcut": headline,
    }


def render_shortcuts(audit: dict, limit: float) -> list[str]:
    """The shortcut audit as Markdown: the verdict, per-property scores and per-class medians and sources."""
    if not audit:
        return []
    verdict = (
        f"**The labels can be predicted without looking at the lungs** (balanced accuracy "
        f"{audit['balanced_accuracy']:.3f} > verify.max_shortcut_accuracy={limit}); the most telling property is "
        f"`{audit['most_telling']}`. Scores on this data may measure the source, not the disease."
        if audit["balanced_accuracy"] > limit
        else f"No strong shortcut: balanced accuracy {audit['balanced_accuracy']:.3f} (chance {audit['chance']:.3f})."
    )
    classes = list(audit["medians"])
    lines = ["", "## Shortcut audit", "", verdict, ""]
    lines += [
        "A classifier on image properties alone (no pixels of the lungs), cross-validated in 5 folds grouped",
        "by patient: balanced accuracy per property, and per-class medians (width and height are the",
        "original size where labels.csv gives it).",
        "",
        "| property | balanced accuracy alone | " + " | ".join(f"median {c}" for c in classes) + " |",
        "|---" * (2 + len(classes)) + "|",
    ]
    for prop, score in audit["per_property"].items():
        lines.append(f"| {prop} | {score} | " + " | ".join(f"{audit['medians'][c][prop]:g}" for c in classes) + " |")
    lines += ["", "Sources per class: " + "; ".join(f"{c}: {audit['sources'][c]}" for c in classes)]
    return lines


def render_report(report: VerifyReport, root: str, audit: dict | None = None, limit: float = 1.0) -> str:
    """The Markdown report: counts per split and class, modes, sizes, every finding by name, the shortcut audit."""
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
        ("Files left out: not images by their suffix", report.ignored),
        ("Identical images across splits (leaks)", [" = ".join(g) for g in report.duplicates_across]),
        ("Near duplicates across splits (leaks)", [" ~ ".join(g) for g in report.near_across]),
        ("Patients in several splits (leaks)", [f"{p}: {', '.join(s)}" for p, s in report.patients_across.items()]),
        ("Identical images within a split", [" = ".join(g) for g in report.duplicates_within]),
        ("Near duplicates within a split", [" ~ ".join(g) for g in report.near_within]),
    ]
    for title, items in sections:
        lines += ["", f"## {title}: {len(items)}"] + [f"- {item}" for item in items]
    lines += render_shortcuts(audit or {}, limit)
    return "\n".join(lines) + "\n"
