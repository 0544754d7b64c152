"""JPEG films decoded on the GPU, in batches, for `decode` when decode.device is cuda.

Decoding a 1024 px film costs more than anything else in `decode`; torchvision's `decode_jpeg` decodes a
list of JPEG byte strings on CUDA in one call (nvJPEG). Only films the device reads exactly as the CPU
path means them go there: JPEG in 8-bit grayscale (L) or RGB, without an EXIF rotation, within the
pixel limit (read from the header) and under BYTES_PER_PIXEL_LIMIT bytes a pixel. Everything else (PNG,
DICOM, CMYK, rotated, corrupt, too large) stays on the CPU worker processes, which also name any error;
a batch the device refuses (decode_jpeg gives no partial results) goes to them whole, said once a batch.
RGB is reduced to gray by PIL's own integer ITU-R 601 formula, so the batched path on the CPU gives
the CPU rows byte for byte (tests/data/test_device_decode.py). nvJPEG's inverse DCT need not match
libjpeg-turbo's to the grey level, which is why decode.device is a param: changing it re-runs decode.

The decoded films come back to the host in one copy per batch; the radiograph steps and the resize
(cxr.data.radiograph.InputRecipe.row, PIL, which releases the GIL) run on threads while the device
decodes the next batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from cxr.data.images import BYTES_PER_PIXEL_LIMIT, pixel_problem
from cxr.data.radiograph import InputRecipe

BATCH = 64  # films per decode_jpeg call
JPEG_SUFFIXES = (".jpg", ".jpeg")
READ_MODES = {"L": ImageReadMode.GRAY, "RGB": ImageReadMode.RGB}
EXIF_ORIENTATION = 0x0112


def device_mode(path: Path, max_pixels: int) -> str | None:
    """The mode ("L" or "RGB") a film is decoded in on the device, or None when the CPU path must read it.
    Only the header is read."""
    path = Path(path)
    if path.suffix.lower() not in JPEG_SUFFIXES or path.stat().st_size > max_pixels * BYTES_PER_PIXEL_LIMIT:
        return None
    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or img.mode not in READ_MODES or pixel_problem(img, max_pixels):
                return None
            return img.mode if img.getexif().get(EXIF_ORIENTATION, 1) == 1 else None
    except (OSError, SyntaxError, ValueError):
        return None  # the CPU path opens it again and says what is wrong


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB to (H, W) uint8 gray exactly as PIL's convert("L"): ITU-R 601 in 16-bit fixed point."""
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)


def decode_films(paths: Sequence[Path], modes: Sequence[str], device: torch.device) -> list[np.ndarray]:
    """Gray (H, W) uint8 arrays of JPEG films (`modes` from device_mode), decoded together on `device`
    and copied back to the host at once."""
    if not paths:
        return []
    data = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths]
    grays: list[torch.Tensor | None] = [None] * len(paths)
    for mode, read_mode in READ_MODES.items():
        picked = [i for i, m in enumerate(modes) if m == mode]
        if picked:
            images = decode_jpeg([data[i] for i in picked], mode=read_mode, device=device)
            for i, image in zip(picked, images, strict=True):
                grays[i] = image[0] if mode == "L" else luma(image)
    shapes = [g.shape for g in grays]
    flat = torch.cat([g.reshape(-1) for g in grays]).cpu().numpy()
    ends = np.cumsum([h * w for h, w in shapes])
    return [part.reshape(shape) for part, shape in zip(np.split(flat, ends[:-1]), shapes, strict=True)]


def device_rows(
    files: Sequence[Path],
    image_size: int,
    max_pixels: int,
    recipe: InputRecipe,
    device: torch.device,
    cpu_rows: Callable[[Sequence[Path]], Iterator[bytes]],
) -> Iterator[bytes]:
    """Each file's row (as `cxr.data.store.decode_image` makes it, as bytes), in order: JPEG films decoded
    on `device` BATCH at a time, one batch ahead of the rows handed out; the rest by `cpu_rows`."""

    def row(gray: np.ndarray) -> bytes:
        return np.ascontiguousarray(recipe.row(Image.fromarray(gray, mode="L"), image_size)[None]).tobytes()

    def start(chunk: Sequence[Path], threads: ThreadPoolExecutor) -> tuple[list, Iterator[bytes], Iterator[bytes]]:
        modes = [device_mode(f, max_pixels) for f in chunk]
        on_cpu = cpu_rows([f for f, m in zip(chunk, modes, strict=True) if m is None])  # runs meanwhile
        picked = [f for f, m in zip(chunk, modes, strict=True) if m is not None]
        try:
            grays = decode_films(picked, [m for m in modes if m is not None], device)
        except RuntimeError as exc:  # the device refused a film; decode_jpeg gives no partial results
            print(f"decode: {len(picked)} JPEG films from {chunk[0].name} on the CPU instead ({device} said: {exc})")
            return modes, on_cpu, cpu_rows(picked)
        resized = [threads.submit(row, g) for g in grays]
        return modes, on_cpu, (future.result() for future in resized)

    with ThreadPoolExecutor() as threads:
        pending: deque = deque()
        for first in range(0, len(files), BATCH):
            pending.append(start(files[first : first + BATCH], threads))
            if len(pending) == 2:  # the next batch is decoding: hand out this one's rows
                yield from _in_order(*pending.popleft())
        while pending:
            yield from _in_order(*pending.popleft())


def _in_order(modes: list, on_cpu: Iterator[bytes], on_device: Iterator[bytes]) -> Iterator[bytes]:
    """The chunk's rows in file order, from the rows of its films the device took and those it did not."""
    for mode in modes:
        yield next(on_device) if mode is not None else next(on_cpu)
