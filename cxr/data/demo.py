"""Write the synthetic demo dataset as data/raw/{split}/{class}/*.png."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.config import TASK_CLASSES, DataConfig
from cxr.data.phantoms import render_phantom
from cxr.data.splits import SPLITS
from cxr.lifetime import worker_dies_with_parent
from cxr.progress import progress

# multilabel demo: every 4th covid image also shows a pneumonia consolidation and is filed
# under both class folders (same file name), so images with two labels exist in every split
CO_INFECTION_EVERY = 4


def _render(job: tuple) -> np.ndarray:
    labels, size, difficulty, key = job
    return render_phantom(labels, size, difficulty, np.random.default_rng(key))


def write_demo_dataset(
    out_dir: Path, data: DataConfig, seed: int, workers: int | None = None
) -> dict[str, dict[str, int]]:
    """Render every split of the demo set into `out_dir`; return image counts per split and class.

    Each image has its own RNG stream keyed by (seed, split, class, index), so the same
    params give byte-identical files whatever the number of `workers` (processes; default:
    the CPU count, at most 8), and changing one split's size leaves the others alone.
    """
    demo = data.demo
    per_class = {"train": demo.train_per_class, "val": demo.val_per_class, "test": demo.test_per_class}
    classes = TASK_CLASSES[data.task]
    jobs = [(s, c, i) for s in SPLITS for c in classes for i in range(per_class[s])]
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for split in SPLITS:
        for cls in classes:
            (out_dir / split / cls).mkdir(parents=True, exist_ok=True)

    def labels_of(cls: str, i: int) -> tuple[str, ...]:
        if data.task == "multilabel" and cls == "covid" and i % CO_INFECTION_EVERY == 0:
            return ("covid", "pneumonia")
        return (cls,)

    renders = [
        (labels_of(c, i), demo.image_size, demo.difficulty, [seed, SPLITS.index(s), classes.index(c), i])
        for s, c, i in jobs
    ]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(renders) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, initializer=worker_dies_with_parent))
            pixels = pool.map(_render, renders, chunksize=max(1, min(16, len(renders) // (4 * workers))))
        else:
            pixels = map(_render, renders)
        rows = zip(jobs, renders, pixels, strict=True)
        bar = progress(rows, total=len(jobs), desc="demo phantoms", unit="img", mininterval=1)
        for (split, cls, i), (labels, *_), array in bar:
            image = Image.fromarray(array, mode="L")
            for label in labels:
                image.save(out_dir / split / label / f"{cls}_{i:05d}.png")
                counts[split][label] += 1
    return counts
