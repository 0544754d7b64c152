"""How `decode` builds the decode-once store (cxr.data.store) from data/raw: every split's files
decoded by `cxr.data.store.decode_image` in worker processes, JPEG films on the GPU in batches where
decode.device is cuda (cxr.data.device_decode), rows written as they come.

Kept apart from cxr.data.store, which every stage that reads the store imports: only `decode` depends
on how the store was made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr.data.device_decode import device_rows
from cxr.data.images import DEFAULT_MAX_PIXELS
from cxr.data.radiograph import DEFAULT, InputRecipe
from cxr.data.splits import SPLITS, file_metadata, scan_split
from cxr.data.store import decode_row, write_store
from cxr.lifetime import worker_dies_with_parent


def _json_labels(labels: np.ndarray) -> list:
    """Labels for index.json: an uncertain finding (NaN) as null, which reads back as NaN."""
    return [[None if v != v else v for v in row] for row in labels.tolist()] if labels.ndim == 2 else labels.tolist()


@dataclass(frozen=True)
class Decoder:
    """How `build_store` decodes: in `workers` processes (None: the CPU count, at most 8); with a `device`,
    JPEG films in batches on it (decode.device cuda; cxr.data.device_decode; the CPU works too, which
    is how the tests check that path) and the rest in the processes."""

    workers: int | None = None
    device: torch.device | None = None

    @property
    def processes(self) -> int:
        """The worker processes it runs: `workers`, or the CPU count, at most 8."""
        return self.workers if self.workers is not None else min(8, os.cpu_count() or 1)


def build_store(
    raw_dir: Path,
    out_dir: Path,
    image_size: int,
    multilabel: bool,
    exclude: frozenset[Path] = frozenset(),
    recipe: InputRecipe = DEFAULT,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: Decoder = Decoder(),
) -> dict[str, int]:
    """Decode every split of `raw_dir` by `recipe` into a store at `out_dir` (replaced atomically), as
    `decoder` says. Returns images per split. `exclude` lists files verify skipped."""
    raw_dir = Path(raw_dir)
    workers = decoder.processes
    train = scan_split(raw_dir, "train", None, multilabel, exclude)
    found = {name: scan_split(raw_dir, name, train.classes, multilabel, exclude) for name in SPLITS}
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, initializer=worker_dies_with_parent))
            if decoder.device is not None:  # fork the workers now, before CUDA and the resize threads start
                pool.submit(int).result()

        def cpu_rows(files: Sequence[Path]) -> Iterator[bytes]:
            jobs = [(str(f), image_size, max_pixels, recipe) for f in files]
            if pool is None or len(jobs) < 2:
                return map(decode_row, jobs)
            return pool.map(decode_row, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers))))

        def rows(files: Sequence[Path]) -> Iterator[bytes]:  # lazy: one split's rows in flight at a time
            if decoder.device is None:
                yield from cpu_rows(files)
            else:
                yield from device_rows(files, image_size, max_pixels, recipe, decoder.device, cpu_rows)

        splits = {
            name: ([f.relative_to(raw_dir).as_posix() for f in s.files], _json_labels(s.labels), rows(s.files))
            for name, s in found.items()
        }
        columns: dict[str, dict[str, list[str]]] = {"sources": {}, "patients": {}}
        for name, s in found.items():
            meta = file_metadata(raw_dir / name)
            columns["sources"][name] = [meta.get(f, {}).get("source", "") for f in s.files]
            columns["patients"][name] = [meta.get(f, {}).get("patient_id", "") for f in s.files]
        write_store(out_dir, image_size, train.classes, multilabel, splits, preprocessing=recipe.name, columns=columns)
    return {name: len(s.files) for name, s in found.items()}
