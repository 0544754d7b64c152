"""Near duplicates at scale (issue 25, item 1): the multi-index candidate search finds exactly the pairs the
all-pairs scan finds, and the thumbnail confirmation keeps copies while dropping distinct films whose hashes
happen to be close."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from benchmarks.near_duplicates import _film, all_pairs
from cxr.data.near_duplicates import candidate_pairs, difference_hash, near_any, near_pairs, same_picture, thumbnail


def _flip(h: np.ndarray, bits: list[int]) -> np.ndarray:
    out = h.copy().view(np.uint8)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return out.view(np.uint64)


@pytest.mark.parametrize("max_bits", [1, 8, 16])
def test_the_candidate_search_finds_exactly_the_scans_pairs(max_bits):
    rng = np.random.default_rng(max_bits)
    hashes = rng.integers(0, 2**63, size=(3000, 4), dtype=np.int64).view(np.uint64)
    for k, distance in enumerate([0, 1, max_bits - 1, max_bits, max_bits + 1, 2 * max_bits]):
        spread = rng.choice(256, size=max(distance, 0), replace=False).tolist()  # flipped bits anywhere
        hashes[2 * k + 1] = _flip(hashes[2 * k], spread)
    assert candidate_pairs(hashes, max_bits) == sorted(all_pairs(hashes, max_bits))
    assert (0, 1) in candidate_pairs(hashes, max_bits) and (8, 9) not in candidate_pairs(hashes, max_bits)


def test_a_bucket_every_film_falls_in_is_compared_in_chunks():
    """Films that agree on a whole block (a blank border) share a bucket; it is compared a chunk at a time."""
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=(1200, 4), dtype=np.int64).view(np.uint64)
    hashes[:, 0] = 0  # the first 64 bits equal for every film: one bucket of 1,200 for several blocks
    hashes[7] = _flip(hashes[3], [70, 100, 200])
    assert candidate_pairs(hashes, 8) == sorted(all_pairs(hashes, 8)) and (3, 7) in candidate_pairs(hashes, 8)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_copies_are_confirmed_and_distinct_films_with_close_hashes_are_not():
    films = [Image.fromarray(_film(i), mode="L") for i in range(1500)]
    hashes = np.stack([difference_hash(f) for f in films])
    thumbs = [thumbnail(f) for f in films]
    close = candidate_pairs(hashes, 16)
    assert close, "distinct phantoms within 16 bits exist: the hash alone would call them copies"
    assert near_pairs(hashes, 16, thumbs) == []  # confirmation drops every one
    original = films[0]
    for copy in (original.resize((64, 64)), original.resize((192, 192)), _jpeg(original, 70),
                 ImageEnhance.Brightness(original).enhance(0.7)):  # fmt: skip
        assert same_picture(thumbs[0], thumbnail(copy))
        assert near_any(hashes, difference_hash(copy), 16, thumbs, thumbnail(copy))
    i, j = close[0]
    assert not near_any(hashes[[i]], hashes[j], 16, [thumbs[i]], thumbs[j])
