"""Checks that the splits on disk can be trained and scored honestly."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cxr.images import SPLITS, DatasetError, labelled_files, split_classes


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


def verify_splits(root: Path, min_per_class: int = 1) -> dict[str, dict[str, int]]:
    """Return image counts per split and class; raise DatasetError listing every problem.

    Problems: a missing split, class sets that differ between splits, a class with fewer
    than `min_per_class` images in a split, and files that do not decode.
    """
    root = Path(root)
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    class_sets = {}
    for split in SPLITS:
        try:
            class_sets[split] = split_classes(root / split)
            pairs = labelled_files(root / split)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        counts[split] = _class_counts(pairs, class_sets[split])
        for cls, n in counts[split].items():
            if n < min_per_class:
                problems.append(f"{root / split / cls}: {n} images, fewer than verify.min_per_class={min_per_class}")
        for path in sorted({path for path, _ in pairs}):
            try:
                with Image.open(path) as img:
                    img.load()
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
                problems.append(f"{path}: does not decode ({type(exc).__name__}: {exc})")
    reference = class_sets.get("train")
    for split, classes in class_sets.items():
        if reference is not None and classes != reference:
            problems.append(f"{root / split}: classes {list(classes)} differ from train's {list(reference)}")
        if len(classes) < 2:
            problems.append(f"{root / split}: needs at least 2 classes, found {list(classes)}")
    if problems:
        raise DatasetError(f"{root}: dataset verification failed:\n  " + "\n  ".join(problems))
    return counts
