"""`python -m benchmarks.near_duplicates --images 10000 100000`: the near-duplicate check at scale.

For each size, renders that many distinct demo phantoms (128 px, the demo's difficulty; every one its
own RNG stream, so no two are copies), hashes them as verify does, and reports:
- the candidate search's time: multi-index hashing (cxr.data.near_duplicates.candidate_pairs) against
  the all-pairs scan it replaced, measured in the same run (the scan only up to --scan-limit films:
  it is quadratic);
- the false alarms: distinct films within `--bits` bits (candidates), their thumbnail correlations,
  and how many the thumbnail confirmation still calls one film (the leak check's false alarms);
- the recall on altered copies of --copies films (half and 1.5 times the size, JPEG q70 and q30,
  darkened x0.7, brightened x1.2, 3 % cropped from each edge): hash candidate and confirmed.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageEnhance

from cxr.data.near_duplicates import (
    CONFIRM,
    candidate_pairs,
    correlation,
    detail,
    difference_hash,
    pairs_within,
    same_picture,
    thumbnail,
)
from cxr.data.phantoms import render_phantom

CLASSES = ("covid", "normal", "pneumonia")


def _film(i: int) -> np.ndarray:
    return render_phantom(CLASSES[i % 3], 128, 0.3, np.random.default_rng([20261128, i]))


def _fingerprint(i: int) -> tuple[np.ndarray, np.ndarray]:
    img = Image.fromarray(_film(i), mode="L")
    return difference_hash(img), thumbnail(img)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


ALTERATIONS = {
    "half size": lambda im: im.resize((64, 64), Image.BILINEAR),
    "1.5x size": lambda im: im.resize((192, 192), Image.BICUBIC),
    "JPEG q70": lambda im: _jpeg(im, 70),
    "JPEG q30": lambda im: _jpeg(im, 30),
    "darkened x0.7": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "brightened x1.2": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "cropped 3%": lambda im: im.crop((4, 4, 124, 124)),
}


def all_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int]]:
    """The scan candidate_pairs replaced: every pair's distance (pairs_within over all films)."""
    return pairs_within(hashes, np.arange(len(hashes)), max_bits)


def recall(hashes: np.ndarray, thumbs: list, copies: int, bits: int) -> dict[str, tuple[int, int]]:
    """Per alteration: (copies found by the hash, copies found and confirmed) of `copies` films."""
    out = {}
    for name, alter in ALTERATIONS.items():
        found = confirmed = 0
        for i in range(copies):
            img = alter(Image.fromarray(_film(i), mode="L"))
            close = int(np.bitwise_count(hashes[i] ^ difference_hash(img)).sum()) <= bits
            found += close
            confirmed += close and same_picture(thumbs[i], thumbnail(img))
        out[name] = (found, confirmed)
    return out


def measure(n: int, bits: int, copies: int, scan_limit: int) -> None:
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        prints = list(pool.map(_fingerprint, range(n), chunksize=256))
    hashes, thumbs = np.stack([p[0] for p in prints]), [p[1] for p in prints]
    print(f"\n{n:,} distinct phantoms rendered and hashed in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    candidates = candidate_pairs(hashes, bits)
    fast = time.perf_counter() - start
    line = f"candidate search (multi-index, {bits + 1} blocks): {fast:.2f} s"
    if n <= scan_limit:
        start = time.perf_counter()
        scanned = all_pairs(hashes, bits)
        slow = time.perf_counter() - start
        assert sorted(scanned) == candidates, "the multi-index search must find exactly the scan's pairs"
        line += f"; all-pairs scan: {slow:.2f} s (ratio {slow / fast:.1f}x), the same {len(scanned)} pairs"
    print(line)
    corr = [correlation(detail(thumbs[i]), detail(thumbs[j])) for i, j in candidates]
    false = sum(c >= CONFIRM for c in corr)
    spread = f", their details correlate {min(corr):.3f} to {max(corr):.3f}" if corr else ""
    print(f"distinct films within {bits} bits (the hash's false alarms): {len(candidates)}{spread}; "
          f"still called one film after confirmation (CONFIRM {CONFIRM}): {false}")  # fmt: skip
    for name, (found, confirmed) in recall(hashes, thumbs, copies, bits).items():
        print(f"  {name:16s} copies found by the hash {found}/{copies}, and confirmed {confirmed}/{copies} "
              f"({confirmed / copies:.1%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--bits", type=int, default=8, help="verify.near_duplicate_bits")
    parser.add_argument("--copies", type=int, default=500)
    parser.add_argument("--scan-limit", type=int, default=20_000, help="largest size the quadratic scan runs at")
    args = parser.parse_args()
    for n in args.images:
        measure(n, args.bits, args.copies, args.scan_limit)


if __name__ == "__main__":
    main()
