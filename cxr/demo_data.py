"""Write the synthetic demo dataset as data/raw/{split}/{class}/*.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr.config import TASK_CLASSES, DataConfig
from cxr.images import SPLITS
from cxr.phantoms import render_phantom


def write_demo_dataset(out_dir: Path, data: DataConfig, seed: int) -> dict[str, dict[str, int]]:
    """Render every split of the demo set into `out_dir`; return counts per split and class.

    Each image has its own RNG stream keyed by (seed, split, class, index), so the same
    params give byte-identical files and changing one split's size leaves the others alone.
    """
    demo = data.demo
    per_class = {"train": demo.train_per_class, "val": demo.val_per_class, "test": demo.test_per_class}
    classes = TASK_CLASSES[data.task]
    jobs = [(s, c, i) for s in SPLITS for c in classes for i in range(per_class[s])]
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for split, cls in {(s, c) for s, c, _ in jobs}:
        (out_dir / split / cls).mkdir(parents=True, exist_ok=True)
    for split, cls, i in tqdm(jobs, desc="demo phantoms", unit="img", mininterval=1.0):
        rng = np.random.default_rng([seed, SPLITS.index(split), classes.index(cls), i])
        pixels = render_phantom(cls, demo.image_size, demo.difficulty, rng)
        Image.fromarray(pixels, mode="L").save(out_dir / split / cls / f"{cls}_{i:05d}.png")
        counts[split][cls] += 1
    return counts
