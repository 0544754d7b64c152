"""Finding, decoding and batching the images of a split: one place for every stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from cxr.errors import PipelineError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# ImageNet statistics: what torchvision's pretrained weights expect, stored in each checkpoint.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(PipelineError, ValueError):
    """The dataset on disk does not have the expected layout; the message names the path."""


@dataclass(frozen=True, eq=False)
class Split:
    """The image files of one split with their labels, in a deterministic order.

    `labels` is an int array (N,) of class indices, or for multi-label data a 0/1 float array
    (N, C) with one column per class.
    """

    name: str
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def split_classes(split_dir: Path) -> tuple[str, ...]:
    """Class names of a split: its sub-folder names, sorted."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split folder not found; expected data/raw/{{train,val,test}}/{{class}}/")
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def scan_split(root: Path, name: str, classes: tuple[str, ...] | None = None, multilabel: bool = False) -> Split:
    """List `root/name/{class}/*` images, sorted by class then file name.

    Multi-label: a file name found in several class folders of the split is one image with all
    of those labels; it is read from the first class folder holding it.
    """
    split_dir = Path(root) / name
    found = split_classes(split_dir)
    classes = classes or found
    if set(found) != set(classes):
        raise DatasetError(f"{split_dir}: classes {list(found)} differ from the expected {list(classes)}")
    by_name: dict[str, tuple[Path, set[int]]] = {}
    files, labels = [], []
    for index, cls in enumerate(classes):
        for path in sorted(p for p in (split_dir / cls).iterdir() if is_image(p)):
            if multilabel:
                by_name.setdefault(path.name, (path, set()))[1].add(index)
            else:
                files.append(path)
                labels.append(index)
    if not multilabel:
        return Split(name, tuple(classes), tuple(files), np.asarray(labels, dtype=np.int64))
    multi_hot = np.zeros((len(by_name), len(classes)), dtype=np.float32)
    for row, (path, indices) in enumerate(by_name.values()):
        files.append(path)
        multi_hot[row, sorted(indices)] = 1.0
    return Split(name, tuple(classes), tuple(files), multi_hot)


def open_rgb(path: Path) -> Image.Image:
    """Decode an image file into 8-bit RGB, honouring EXIF orientation."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
            img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
        return img.convert("RGB")


def load_pixels(split: Split, image_size: int) -> torch.Tensor:
    """Decode and resize every image of a split once: a uint8 tensor (N, 3, size, size)."""
    out = torch.empty((len(split.files), 3, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(split.files, desc=f"decode {split.name}", unit="img", mininterval=1.0)):
        img = open_rgb(path).resize((image_size, image_size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return out


def normalize(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, 3, H, W) to float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s
