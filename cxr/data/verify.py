"""Checks that the splits on disk can be trained and scored honestly."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.images import pixel_digest
from cxr.data.near_duplicates import difference_hash, near_pairs
from cxr.data.splits import SPLITS, DatasetError, labelled_files, split_classes, split_patients


def _class_counts(pairs: list[tuple[Path, tuple[str, ...]]], classes: tuple[str, ...]) -> dict[str, int]:
    return {cls: sum(cls in labels for _, labels in pairs) for cls in classes}


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Images per class in each split folder present under `root`."""
    root = Path(root)
    return {
        split: _class_counts(labelled_files(root / split), split_classes(root / split))
        for split in SPLITS
        if (root / split).is_dir()
    }


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


def verify_splits(
    root: Path,
    min_per_class: int = 1,
    max_leaks: int = 0,
    max_pixels: int = 50_000_000,
    near_bits: int = 8,
    expected: dict[str, int] | None = None,
    skip_unreadable: bool = False,
) -> VerifyReport:
    """Check the splits under `root`; raise DatasetError listing every problem.

    Problems: a missing split, class sets that differ between splits, a class with fewer
    than `min_per_class` images in a split, files that do not decode or exceed `max_pixels`, and more than
    `max_leaks` groups of identical images found in more than one split.
    """
    root = Path(root)
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    class_sets = {}
    by_digest: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    seen: list[tuple[str, Path, np.ndarray]] = []
    modes: dict[str, int] = defaultdict(int)
    unreadable: list[tuple[Path, str]] = []
    files_in: dict[str, int] = {}  # distinct files per split, for verify.expected
    excluded: list[str] = []
    sizes: list[tuple[int, int]] = []
    for split in SPLITS:
        try:
            class_sets[split] = split_classes(root / split)
            pairs = labelled_files(root / split)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        files_in[split] = len({path for path, _ in pairs})
        for path in sorted({path for path, _ in pairs}):
            try:
                with Image.open(path) as img:
                    if img.width * img.height > max_pixels:  # checked from the header, before decoding
                        unreadable.append(
                            (
                                path,
                                f"{img.width}x{img.height} = {img.width * img.height:,} pixels, over "
                                f"verify.max_pixels={max_pixels:,}; downscale it or raise the limit",
                            )
                        )
                        continue
                    img.load()
                    modes[img.mode] += 1
                    sizes.append(img.size)
                    digest = pixel_digest(img)
                    if digest not in by_digest:  # exact copies are reported as such, not as near ones
                        seen.append((split, path, difference_hash(img)))
                    by_digest[digest].append((split, path))
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
                unreadable.append((path, f"does not decode ({type(exc).__name__}: {exc})"))
        bad = {path for path, _ in unreadable} if skip_unreadable else set()
        counts[split] = _class_counts([(p, lb) for p, lb in pairs if p not in bad], class_sets[split])
        for cls, n in counts[split].items():
            if n < min_per_class:
                problems.append(f"{root / split / cls}: {n} images, fewer than verify.min_per_class={min_per_class}")
    if skip_unreadable:
        excluded = [str(path.relative_to(root)) for path, _ in unreadable]
    else:
        problems += [f"{path}: {why}" for path, why in unreadable]
        problems += ["  (set verify.on_corrupt: skip to exclude and list them instead)"] if unreadable else []
    reference = class_sets.get("train")
    for split, classes in class_sets.items():
        if reference is not None and classes != reference:
            problems.append(f"{root / split}: classes {list(classes)} differ from train's {list(reference)}")
        if len(classes) < 2:
            problems.append(f"{root / split}: needs at least 2 classes, found {list(classes)}")
    for split, want in (expected or {}).items():
        have = files_in.get(split, 0)
        if have != want:
            problems.append(f"{root / split}: {have} images, but verify.expected.{split}={want}")
    report = VerifyReport(counts, modes=dict(sorted(modes.items())), excluded=excluded)
    if sizes:
        by_area = sorted(sizes, key=lambda wh: wh[0] * wh[1])
        report.sizes = [by_area[0], by_area[-1]]
    for group in by_digest.values():
        if len(group) > 1:
            names = [str(path.relative_to(root)) for _, path in group]
            crosses = len({split for split, _ in group}) > 1
            (report.duplicates_across if crosses else report.duplicates_within).append(names)
    if seen:
        for i, j in near_pairs(np.stack([h for _, _, h in seen]), near_bits):
            names = [str(seen[k][1].relative_to(root)) for k in (i, j)]
            (report.near_across if seen[i][0] != seen[j][0] else report.near_within).append(names)
    splits_of_patient: dict[str, list[str]] = defaultdict(list)
    for split in counts:
        for patient in split_patients(root / split):
            splits_of_patient[patient].append(split)
    report.patients_across = {p: s for p, s in sorted(splits_of_patient.items()) if len(s) > 1}
    leaks = len(report.duplicates_across) + len(report.near_across) + len(report.patients_across)
    if leaks > max_leaks:
        listed = [" = ".join(g) for g in report.duplicates_across[:20]]
        listed += [" ~ ".join(g) for g in report.near_across[:20]]
        listed += [f"patient {p} in {' and '.join(s)}" for p, s in list(report.patients_across.items())[:20]]
        problems.append(
            f"{leaks} leaks across splits ({len(report.duplicates_across)} images with identical pixels, "
            f"{len(report.near_across)} near-duplicate pairs (verify.near_duplicate_bits={near_bits}), "
            f"{len(report.patients_across)} patients), more than verify.max_leaks={max_leaks}; test scores would be "
            "inflated. Keep each image and each patient in one split:\n    " + "\n    ".join(listed)
        )
    if problems:
        raise DatasetError(f"{root}: dataset verification failed:\n  " + "\n  ".join(problems))
    return report
