"""Write the synthetic demo dataset as data/raw/{split}/{class}/*.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr.config import TASK_CLASSES, DataConfig
from cxr.images import SPLITS
from cxr.phantoms import render_phantom

# multilabel demo: every 4th covid image also shows a pneumonia consolidation and is filed
# under both class folders (same file name), so images with two labels exist in every split
CO_INFECTION_EVERY = 4


def write_demo_dataset(out_dir: Path, data: DataConfig, seed: int) -> dict[str, dict[str, int]]:
    """Render every split of the demo set into `out_dir`; return image counts per split and class.

    Each image has its own RNG stream keyed by (seed, split, class, index), so the same
    params give byte-identical files and changing one split's size leaves the others alone.
    """
    demo = data.demo
    per_class = {"train": demo.train_per_class, "val": demo.val_per_class, "test": demo.test_per_class}
    classes = TASK_CLASSES[data.task]
    jobs = [(s, c, i) for s in SPLITS for c in classes for i in range(per_class[s])]
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for split in SPLITS:
        for cls in classes:
            (out_dir / split / cls).mkdir(parents=True, exist_ok=True)
    for split, cls, i in tqdm(jobs, desc="demo phantoms", unit="img", mininterval=1.0):
        labels = (cls,)
        if data.task == "multilabel" and cls == "covid" and i % CO_INFECTION_EVERY == 0:
            labels = ("covid", "pneumonia")
        rng = np.random.default_rng([seed, SPLITS.index(split), classes.index(cls), i])
        image = Image.fromarray(render_phantom(labels, demo.image_size, demo.difficulty, rng), mode="L")
        for label in labels:
            image.save(out_dir / split / label / f"{cls}_{i:05d}.png")
            counts[split][label] += 1
    return counts
