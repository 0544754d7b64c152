"""Near-duplicate images: re-encoded, resized or re-exposed copies of one film.

Two steps, so the check stays right and fast at 100,000 films. The 256-bit difference hash finds
candidates: pairs within `max_bits` bits, found by multi-index hashing (the hash cut into max_bits + 1
blocks; two hashes within max_bits bits agree exactly on at least one block, so only films sharing a
block value are compared), not by comparing every pair. A candidate is then confirmed on aligned 32 x 32
thumbnails: the correlation of their details (each thumbnail less its blur) must reach CONFIRM.
Measured on 5,000 distinct demo phantoms and 150 altered copies of each kind (benchmarks/near_duplicates.py
repeats it at 10,000 and 100,000): whole thumbnails of distinct films correlate up to 0.997 (one anatomy),
above JPEG q30 copies (0.9992 at least); their details correlate at most 0.972 while every copy's details
(half or 1.5 times the size, JPEG q70 or q30, darkened x0.7, brightened x1.2) correlate at 0.989 or more.
A copy cropped by 3 % per edge is no longer aligned (details 0.91): neither step calls it a copy.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image, ImageFilter

HASH_SIDE = 16  # 16 x 16 difference hash = 256 bits; 8 x 8 calls distinct X-rays (and phantoms) equal
THUMB_SIDE = 32  # the aligned thumbnail a candidate pair is confirmed on
CONFIRM = 0.985  # correlation of two thumbnails' details from which two films are one (measured, see above)


def difference_hash(img: Image.Image) -> np.ndarray:
    """256-bit dHash: is each pixel of a 17 x 16 grayscale thumbnail brighter than its left neighbour. The
    thumbnail is LANCZOS-resampled (imagehash's choice): on 200 demo films (128 px) it catches more altered
    copies within 8 bits than BILINEAR did in every kind measured (half or 1.5 times the size, JPEG q90/70/30,
    darker or brighter; e.g. JPEG q70 145 against 76, darkened x0.7 132 against 43), and neither pairs any two
    of the 620 distinct films."""
    small = np.asarray(img.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.LANCZOS), dtype=np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).view(np.uint64)


def thumbnail(img: Image.Image) -> np.ndarray:
    """The film as a THUMB_SIDE x THUMB_SIDE grayscale thumbnail, uint8 (1 KB a film, kept for every film
    of a 100,000-film set)."""
    return np.asarray(img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS), dtype=np.uint8)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays' values (1 for one picture however its exposure or contrast changed)."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm > 0 else float(np.array_equal(a, b))


def detail(thumb: np.ndarray) -> np.ndarray:
    """A thumbnail less its Gaussian blur (radius 1): the film's own fine structure, without the anatomy
    every chest film shares, which is what made distinct films correlate at 0.997 on whole thumbnails."""
    blurred = Image.fromarray(thumb).filter(ImageFilter.GaussianBlur(1))
    return thumb.astype(np.float32) - np.asarray(blurred, dtype=np.float32)


def same_picture(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two thumbnails are one film (their details correlate at CONFIRM or more); True when either is
    missing, so a caller without thumbnails keeps the hash's verdict."""
    return a is None or b is None or correlation(detail(a), detail(b)) >= CONFIRM


def _blocks(hashes: np.ndarray, parts: int) -> np.ndarray:
    """(N, parts) int64 keys: the 256 bits cut into `parts` contiguous blocks of near-equal width."""
    bits = np.unpackbits(hashes.view(np.uint8), axis=1)  # (N, 256)
    edges = np.linspace(0, bits.shape[1], parts + 1).astype(int)
    keys = np.zeros((len(hashes), parts), np.int64)
    for k in range(parts):
        block = bits[:, edges[k] : edges[k + 1]]
        keys[:, k] = block.astype(np.int64) @ (1 << np.arange(block.shape[1], dtype=np.int64))
    return keys


def candidate_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `max_bits` bits; hashes is (N, 4) uint64.
    Multi-index hashing: only films agreeing exactly on one of max_bits + 1 blocks are compared."""
    if max_bits <= 0 or len(hashes) < 2:
        return []
    seen: set[tuple[int, int]] = set()
    keys = _blocks(hashes, max_bits + 1)
    for k in range(keys.shape[1]):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys[:, k].tolist()):
            buckets[key].append(i)
        for members in buckets.values():
            if len(members) > 1:
                seen.update(pairs_within(hashes, np.asarray(members), max_bits))
    return sorted(seen)


def pairs_within(hashes: np.ndarray, idx: np.ndarray, max_bits: int, chunk: int = 256) -> list[tuple[int, int]]:
    """Pairs of `idx` (i < j) within max_bits bits, every pair compared, `chunk` rows at a time (memory stays
    chunk x len(idx) bytes per hash word, even for a bucket every film falls in)."""
    found = []
    group = hashes[idx]
    for start in range(0, len(idx), chunk):
        block = group[start : start + chunk]
        distance = np.zeros((len(block), len(idx)), np.uint16)
        for word in range(group.shape[1]):
            distance += np.bitwise_count(block[:, None, word] ^ group[None, :, word])
        for a, b in zip(*np.nonzero(distance <= max_bits), strict=True):
            if start + a < b:
                found.append((int(idx[start + a]), int(idx[b])))
    return found


def near_pairs(hashes: np.ndarray, max_bits: int, thumbs: list | None = None) -> list[tuple[int, int]]:
    """Index pairs (i < j) of near-duplicate films: hashes within `max_bits` bits (0 = none), confirmed on
    their thumbnails when given."""
    pairs = candidate_pairs(hashes, max_bits)
    return [(i, j) for i, j in pairs if thumbs is None or same_picture(thumbs[i], thumbs[j])]


def near_any(hashes: np.ndarray, one: np.ndarray, max_bits: int, thumbs: list | None = None, thumb=None) -> bool:
    """Whether `one` hash (with its thumbnail) is a near duplicate of any of `hashes` (N, 4): within
    `max_bits` bits (0 = never) and, when thumbnails are given, confirmed on them."""
    if max_bits <= 0 or len(hashes) == 0:
        return False
    close = np.nonzero(np.bitwise_count(hashes ^ one[None]).sum(1) <= max_bits)[0]
    return any(thumbs is None or same_picture(thumbs[i], thumb) for i in close)
