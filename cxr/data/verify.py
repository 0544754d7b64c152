"""Checks that the splits on disk can be trained and scored honestly.

One reading pass (`read_split`) decodes every file once into a `FileRecord`; small pure checks
turn the records into problem messages; `verify_splits` runs them and raises them together.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.data.fingerprints import FileRecord, read_file
from cxr.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from cxr.data.near_duplicates import near_pairs
from cxr.data.splits import (
    LABELS_CSV,
    SPLITS,
    DatasetError,
    class_counts,
    file_metadata,
    labelled_files,
    split_classes,
    split_patients,
)


@dataclass
class VerifyReport:
    """Counts per split and class, and groups of files whose decoded pixels are identical."""

    counts: dict[str, dict[str, int]]
    duplicates_within: list[list[str]] = field(default_factory=list)  # inside one split
    duplicates_across: list[list[str]] = field(default_factory=list)  # spanning splits: a leak
    patients_across: dict[str, list[str]] = field(default_factory=dict)  # patient id -> splits: a leak
    near_within: list[list[str]] = field(default_factory=list)  # perceptual-hash pairs, one split
    near_across: list[list[str]] = field(default_factory=list)  # perceptual-hash pairs across splits: a leak
    modes: dict[str, int] = field(default_factory=dict)  # image mode (L, RGB, I;16, ...) -> files
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of the smallest and largest
    excluded: list[str] = field(default_factory=list)  # unreadable files skipped (verify.on_corrupt: skip)
    ignored: list[str] = field(default_factory=list)  # files that are not images by their suffix: left out
    appearance: list[dict] = field(default_factory=list)  # per readable image: label, group, source, properties

    @property
    def leaks(self) -> int:
        return len(self.duplicates_across) + len(self.near_across) + len(self.patients_across)


def read_split(root: Path, split: str, max_pixels: int):
    """(classes, labelled files, one record per distinct file) of a split; raises DatasetError on its layout."""
    classes = split_classes(root / split)
    pairs = labelled_files(root / split)
    return classes, pairs, [read_file(split, path, max_pixels) for path in sorted({p for p, _ in pairs})]


def class_problems(root: Path, class_sets: dict[str, tuple[str, ...]]) -> list[str]:
    """Splits whose classes differ from train's, or that have fewer than two."""
    problems, reference = [], class_sets.get("train")
    for split, classes in class_sets.items():
        if reference is not None and classes != reference:
            problems.append(f"{root / split}: classes {list(classes)} differ from train's {list(reference)}")
        if len(classes) < 2:
            problems.append(f"{root / split}: needs at least 2 classes, found {list(classes)}")
    return problems


def count_problems(root: Path, counts: dict, files_in: dict[str, int], min_per_class: int, expected: dict) -> list[str]:
    """Classes below verify.min_per_class, and splits whose size differs from verify.expected."""
    problems = [
        f"{root / split / cls}: {n} images, fewer than verify.min_per_class={min_per_class}"
        for split, per_class in counts.items()
        for cls, n in per_class.items()
        if n < min_per_class
    ]
    for split, want in (expected or {}).items():
        if files_in.get(split, 0) != want:
            problems.append(f"{root / split}: {files_in.get(split, 0)} images, but verify.expected.{split}={want}")
    return problems


def find_copies(root: Path, records: list[FileRecord], near_bits: int, report: VerifyReport) -> None:
    """Fill the report's identical groups and near-duplicate pairs, within and across splits."""
    by_digest: dict[str, list[FileRecord]] = defaultdict(list)
    for r in records:
        by_digest[r.digest].append(r)
    for group in by_digest.values():
        if len(group) > 1:
            names = [str(r.path.relative_to(root)) for r in group]
            crosses = len({r.split for r in group}) > 1
            (report.duplicates_across if crosses else report.duplicates_within).append(names)
    firsts = [group[0] for group in by_digest.values()]  # exact copies are reported as such, not as near ones
    if firsts:
        for i, j in near_pairs(np.stack([r.dhash for r in firsts]), near_bits, [r.thumb for r in firsts]):
            names = [str(firsts[k].path.relative_to(root)) for k in (i, j)]
            (report.near_across if firsts[i].split != firsts[j].split else report.near_within).append(names)


def appearance_rows(root: Path, records: list[FileRecord], labels_of: dict[Path, str]) -> list[dict]:
    """Rows for the shortcut audit: label, group (patient, else pixel digest), source and the
    image's properties, with the original size where labels.csv records it."""
    meta: dict[Path, dict[str, str]] = {}
    for split in {r.split for r in records}:
        meta.update(file_metadata(root / split))
    rows = []
    for r in records:
        m = meta.get(r.path, {})
        looks = dict(r.looks)
        if m.get("orig_width") and m.get("orig_height"):
            looks["width"], looks["height"] = float(m["orig_width"]), float(m["orig_height"])
            looks["aspect"] = looks["width"] / max(looks["height"], 1.0)
        group = m.get("patient_id") or r.digest
        rows.append({"label": labels_of[r.path], "group": group, "source": m.get("source", ""), **looks})
    return rows


def ignored_files(root: Path) -> list[str]:
    """Files in the splits that are neither images (IMAGE_SUFFIXES) nor a labels.csv: left out, and named."""
    return sorted(
        str(p.relative_to(root))
        for split in SPLITS
        if (root / split).is_dir()
        for p in (root / split).rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != LABELS_CSV
        and p.suffix.lower() not in IMAGE_SUFFIXES
    )


def patients_across(root: Path, splits) -> dict[str, list[str]]:
    """Patient ids (from the splits' labels.csv) found in more than one split."""
    splits_of_patient: dict[str, list[str]] = defaultdict(list)
    for split in splits:
        for patient in split_patients(root / split):
            splits_of_patient[patient].append(split)
    return {p: s for p, s in sorted(splits_of_patient.items()) if len(s) > 1}


def leak_problem(report: VerifyReport, max_leaks: int, near_bits: int) -> list[str]:
    """One message listing the leaks across splits, when there are more than verify.max_leaks."""
    if report.leaks <= max_leaks:
        return []
    listed = [" = ".join(g) for g in report.duplicates_across[:20]]
    listed += [" ~ ".join(g) for g in report.near_across[:20]]
    listed += [f"patient {p} in {' and '.join(s)}" for p, s in list(report.patients_across.items())[:20]]
    return [
        f"{report.leaks} leaks across splits ({len(report.duplicates_across)} images with identical pixels, "
        f"{len(report.near_across)} near-duplicate pairs (verify.near_duplicate_bits={near_bits}), "
        f"{len(report.patients_across)} patients), more than verify.max_leaks={max_leaks}; test scores would be "
        "inflated. Keep each image and each patient in one split:\n    " + "\n    ".join(listed)
    ]


def verify_splits(
    root: Path,
    min_per_class: int = 1,
    max_leaks: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    near_bits: int = 8,
    expected: dict[str, int] | None = None,
    skip_unreadable: bool = False,
) -> VerifyReport:
    """Check the splits under `root`; raise DatasetError listing every problem.

    Problems: a missing split, class sets that differ between splits, a class with fewer than
    `min_per_class` images in a split, files that do not decode or exceed `max_pixels`, a split
    size other than `expected`, and more than `max_leaks` leaks across splits (identical or
    near-identical images, patients).
    """
    root = Path(root)
    problems: list[str] = []
    class_sets, counts, files_in, records, labels_of = {}, {}, {}, [], {}
    for split in SPLITS:
        try:
            class_sets[split], pairs, found = read_split(root, split, max_pixels)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        files_in[split] = len(found)
        bad = {r.path for r in found if r.problem} if skip_unreadable else set()
        counts[split] = class_counts([(p, lb) for p, lb in pairs if p not in bad], class_sets[split])
        records += found
        labels_of.update({p: ";".join(lb) for p, lb in pairs})
    unreadable = [r for r in records if r.problem]
    good = [r for r in records if not r.problem]
    problems += count_problems(root, counts, files_in, min_per_class, expected or {})
    if not skip_unreadable:
        problems += [r.why for r in unreadable]
        problems += ["  (set verify.on_corrupt: skip to exclude and list them instead)"] if unreadable else []
    problems += class_problems(root, class_sets)
    excluded = [str(r.path.relative_to(root)) for r in unreadable] if skip_unreadable else []
    report = VerifyReport(counts, modes=dict(sorted(Counter(r.mode for r in good).items())), excluded=excluded)
    if good:
        by_area = sorted((r.size for r in good), key=lambda wh: wh[0] * wh[1])
        report.sizes = [by_area[0], by_area[-1]]
    find_copies(root, good, near_bits, report)
    report.patients_across = patients_across(root, counts)
    report.ignored = ignored_files(root)
    report.appearance = appearance_rows(root, good, labels_of)
    problems += leak_problem(report, max_leaks, near_bits)
    if problems:
        raise DatasetError(f"{root}: dataset verification failed:\n  " + "\n  ".join(problems))
    return report
