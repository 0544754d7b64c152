"""Running a trained checkpoint on new image files, with the preprocessing it was trained with."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.film_checks import check_files
from cxr.data.images import IMAGE_SUFFIXES
from cxr.data.store import decode_all
from cxr.evaluate.doubt import (
    DOUBT_COLUMNS,
    Abstention,
    Assessment,
    Scorer,
    checks_only,
    doubt_cells,
    joined,
)
from cxr.model.decisions import DEFAULT_THRESHOLD, label_name, screened_classes, thresholded
from cxr.model.spec import ModelSpec


@dataclass
class Inputs:
    """Image files found under the given paths, and the paths that are not usable images."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def find_images(paths: Iterable[str | Path]) -> Inputs:
    """Files as given, folders searched recursively for image suffixes, in a sorted order."""
    found = Inputs()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            images = [p for p in inside if p.suffix.lower() in IMAGE_SUFFIXES]
            suffixes = ", ".join(IMAGE_SUFFIXES)
            found.problems += [(str(p), f"not an image file (expected {suffixes})") for p in inside if p not in images]
            if not images:
                found.problems.append((str(path), "folder holds no image files"))
            found.files += images
        elif path.is_file():
            found.files.append(path)
        else:
            found.problems.append((str(path), "no such file or folder"))
    return found


def decide(
    spec: ModelSpec, probs: np.ndarray, thresholds: dict[str, float | None] | None
) -> tuple[list[str], dict[str, float]]:
    """Decisions as class names (several joined by ';' for multi-label) and the thresholds used:
    those `evaluate` fitted on validation when given, else 0.5 (argmax for multi-class)."""
    given = {k: v for k, v in (thresholds or {}).items() if v is not None}
    decided = spec.decide(probs, given)
    names = [label_name(d, spec.classes, spec.multilabel) for d in decided]
    if not thresholded(spec.classes, spec.multilabel):
        return names, {}
    screened = [spec.classes[i] for i in screened_classes(spec.classes, spec.multilabel)]
    return names, {c: given.get(c, DEFAULT_THRESHOLD) for c in screened}


@dataclass
class Scored:
    """Files that decoded, their assessment and abstention reasons; the files that did not, with why."""

    files: list[Path]
    doubt: Assessment
    checks: list[str]  # film_checks' finding per file ('' = passed)
    reasons: list[str]
    problems: list[tuple[str, str]]


def assess_files(scorer: Scorer, files: Sequence[Path], rule: Abstention | None, chunk: int = 256) -> Scored:
    """Decode (with the checkpoint's recipe), check and score files a chunk at a time (memory stays
    bounded): the one path of predict, external and serve. Without a fitted `rule` (no evaluate
    metrics for this model) only the model-free checks make it abstain."""
    spec, good, parts, problems, checks = scorer.spec, [], [], [], []
    for start in range(0, len(files), chunk):
        ok, pixels, unreadable = decode_all(
            list(files[start : start + chunk]), spec.image_size, scorer.max_pixels, spec.preprocessing
        )
        problems += unreadable
        if ok:
            good += ok
            parts.append(scorer.assess(pixels))
            checks += check_files(ok, scorer.max_pixels)
    doubt = joined(parts, len(spec.classes))
    reasons = rule.reasons(doubt, checks) if rule is not None else checks_only(checks, len(good))
    return Scored(good, doubt, checks, reasons, problems)


def render(scored: Scored, decisions: Sequence[str], classes, fmt: str) -> str:
    """The predictions as CSV (path, p_<class>..., decision, ood_score, uncertainty, abstain, reason) or JSON."""
    doubt = scored.doubt
    if fmt == "json":
        rows = []
        for i, (f, d) in enumerate(zip(scored.files, decisions, strict=True)):
            ood, spread, abstain, reason = doubt_cells(doubt, i, scored.reasons)
            rows.append({
                "path": str(f),
                "probabilities": dict(zip(classes, map(float, doubt.probs[i]), strict=True)),
                "decision": d,
                "ood_score": float(ood) if ood else None,
                "uncertainty": float(spread),
                "abstain": abstain == "yes",
                "reason": reason,
            })  # fmt: skip
        return json.dumps(rows, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", *(f"p_{c}" for c in classes), "decision", *DOUBT_COLUMNS])
    for i, (f, d) in enumerate(zip(scored.files, decisions, strict=True)):
        writer.writerow([str(f), *(f"{x:.6f}" for x in doubt.probs[i]), d, *doubt_cells(doubt, i, scored.reasons)])
    return out.getvalue()
