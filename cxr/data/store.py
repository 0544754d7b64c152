"""The decode-once image store: each split decoded, resized and kept as uint8 rows on disk.

Decoding and resizing a 1024 px PNG costs about as much as a ResNet18 inference, so the
notebooks' habit of decoding every file in every epoch doubles the cost of an epoch. The
`decode` stage does it once per dataset and image size into `data/decoded/{split}.npy`
(N x 1 x S x S uint8, a standard .npy file) plus `index.json` (files, labels, classes).
Radiographs are one channel: the store keeps one (a third of the disk, memory and read time of
RGB rows) and `Runtime.images` expands it to the network's three on the device.
Batches are read with `pread` into one buffer: memory stays at one batch however large the
dataset, and the operating system's page cache keeps hot rows in RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cxr.atomic import atomic_dir
from cxr.data.images import DEFAULT_MAX_PIXELS, open_gray
from cxr.data.radiograph import DEFAULT, InputRecipe
from cxr.data.splits import DatasetError
from cxr.progress import progress

STORE_FORMAT = 2
INDEX = "index.json"
# How a file becomes a row: decoded to 8-bit grayscale (cxr.data.images.open_gray; colour files
# by ITU-R 601 luma, DICOM windowed), then the radiograph-aware steps of train.input and a bilinear
# resize to a square (cxr.data.radiograph.InputRecipe). The recipe's name is recorded in the index
# and in checkpoints, and prediction rebuilds the recipe from it.
CHANNELS = 1


def decode_image(
    path: Path | str, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, recipe: InputRecipe = DEFAULT
) -> np.ndarray:
    """One image file as the model sees it before normalisation: uint8 (1, size, size)."""
    return np.ascontiguousarray(recipe.row(open_gray(Path(path), max_pixels), image_size)[None])


def decode_row(job: tuple[str, int, int, InputRecipe]) -> bytes:
    """decode_image's row as bytes, from one picklable (path, size, max pixels, recipe) job for worker processes."""
    return decode_image(*job).tobytes()


def _write_rows(path: Path, n: int, shape: tuple[int, int, int], rows: Iterable[bytes], desc: str) -> None:
    """An .npy file of n uint8 rows of `shape` (channels, size, size), written as they come."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)}
    written = 0
    with path.open("wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        for row in progress(rows, total=n, desc=desc, unit="img", mininterval=1.0):
            out.write(row)
            written += 1
    if written != n:
        raise StoreError(f"{path}: {written} rows written, {n} expected")


def write_store(
    out_dir: Path,
    image_size: int,
    classes: Sequence[str],
    multilabel: bool,
    splits: Mapping[str, tuple[Sequence[str], list, Iterable[bytes]]],
    channels: int = CHANNELS,
    preprocessing: str = DEFAULT.name,
    columns: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> None:
    """Write a store (replacing `out_dir` atomically) from, per split: relative file names,
    labels (class indices or multi-hot rows) and an iterable of uint8 rows (channels, S, S) as bytes,
    made by the recipe named `preprocessing`. `columns` holds labels.csv metadata per split's files, each recorded
    when any file names one: `sources` (what `train.sampler: source` balances) and `patients` (what
    `data.label_fraction` keeps together)."""
    index: dict = {
        "format": STORE_FORMAT,
        "image_size": image_size,
        "channels": channels,
        "preprocessing": preprocessing,
        "multilabel": multilabel,
        "classes": list(classes),
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for name, (files, labels, rows) in splits.items():
            _write_rows(tmp / f"{name}.npy", len(files), (channels, image_size, image_size), rows, f"decode {name}")
            index["splits"][name] = {"files": list(files), "labels": labels}
            for column, values in (columns or {}).items():
                if any(values.get(name, ())):
                    index["splits"][name][column] = list(values[name])
        (tmp / INDEX).write_text(json.dumps(index) + "\n")


class StoreError(DatasetError):
    """The decoded store is missing, from another format or for another image size."""


class SplitStore:
    """One split of the store: `store[idx]` reads rows as a uint8 tensor (B, C, S, S), C = 1 for this
    version's stores (3 for RGB rows written with write_store(channels=3)).

    `files` are relative to the raw data folder; `labels` as in `cxr.data.images.Split`.
    """

    _fd = -1

    def __init__(self, root: Path | str, name: str, image_size: int | None = None, preprocessing: str | None = None):
        root = Path(root)
        index_path = root / INDEX
        if not index_path.is_file():
            raise StoreError(f"{index_path}: decoded image store not found; run `dvc repro decode` first")
        index = json.loads(index_path.read_text())
        if index.get("format") != STORE_FORMAT:
            raise StoreError(f"{root}: store format {index.get('format')!r}, expected {STORE_FORMAT}; rerun decode")
        if image_size is not None and index["image_size"] != image_size:
            raise StoreError(
                f"{root}: images stored at {index['image_size']} px but the model needs {image_size} px; "
                "run `dvc repro` so decode follows train.image_size"
            )
        if preprocessing is not None and index.get("preprocessing") != preprocessing:
            raise StoreError(
                f"{root}: images decoded by {index.get('preprocessing')!r} but the model needs {preprocessing!r} "
                "(train.input); run `dvc repro` so decode follows train.input"
            )
        if name not in index["splits"]:
            raise StoreError(f"{root}: no split {name!r} in the store (has {sorted(index['splits'])})")
        entry = index["splits"][name]
        self.name = name
        self.root = root
        self.classes: tuple[str, ...] = tuple(index["classes"])
        self.image_size: int = index["image_size"]
        self.preprocessing: str = index["preprocessing"]
        self.files: tuple[str, ...] = tuple(entry["files"])
        self.sources: tuple[str, ...] = tuple(entry.get("sources", ("",) * len(self.files)))  # "" = not named
        self.patients: tuple[str, ...] = tuple(entry.get("patients", ("",) * len(self.files)))
        if index["multilabel"]:
            self.labels = np.asarray(entry["labels"], dtype=np.float32).reshape(len(self.files), len(self.classes))
        else:
            self.labels = np.asarray(entry["labels"], dtype=np.int64).reshape(len(self.files))
        self.path = root / f"{name}.npy"
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            self._offset = f.tell()
        self.channels: int = index.get("channels", 3)
        expected = (len(self.files), self.channels, self.image_size, self.image_size)
        if tuple(shape) != expected or dtype != np.uint8:
            raise StoreError(f"{self.path}: holds {dtype} {tuple(shape)}, the index describes uint8 {expected}")
        self._row_bytes = self.channels * self.image_size * self.image_size
        self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: torch.Tensor | Sequence[int] | slice) -> torch.Tensor:
        rows = range(len(self))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        out = torch.empty((len(rows), self.channels, self.image_size, self.image_size), dtype=torch.uint8)
        buffer = out.numpy().reshape(len(rows), self._row_bytes)
        for j, i in enumerate(rows):
            if not 0 <= i < len(self):
                raise IndexError(f"{self.path}: row {i} out of range 0..{len(self) - 1}")
            if os.preadv(self._fd, [buffer[j]], self._offset + i * self._row_bytes) != self._row_bytes:
                raise StoreError(f"{self.path}: truncated at row {i}; rerun `dvc repro -f decode`")
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


def decode_all(
    files: Sequence[Path], image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, preprocessing: str = DEFAULT.name
) -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """Decode each file as the store does, by the recipe named `preprocessing` (a checkpoint's); files
    that are not readable images, or larger than `max_pixels`, are reported."""
    recipe = InputRecipe.from_name(preprocessing)
    good, rows, problems = [], [], []
    for path in files:
        try:
            rows.append(decode_image(path, image_size, max_pixels, recipe))
            good.append(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not a readable image"
            problems.append((str(path), f"not a readable image ({type(exc).__name__}: {exc})"))
    pixels = np.stack(rows) if rows else np.zeros((0, CHANNELS, image_size, image_size), np.uint8)
    return good, pixels, problems
