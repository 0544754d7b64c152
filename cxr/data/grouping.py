"""Which images must stay together, and the seeded, stratified deal of those groups into splits or
folds: identical pixels, near-identical images (perceptual hash) and one patient's films are one group."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.fingerprints import read_file
from cxr.data.images import DEFAULT_MAX_PIXELS
from cxr.data.near_duplicates import near_pairs
from cxr.data.splits import DatasetError


@dataclass(frozen=True)
class Grouping:
    """How images are grouped before splitting (verify's params, applied at split time too):
    near-duplicates within `near_bits`, images over `max_pixels` refused, and a file that does not
    decode either fails the split or (`skip_corrupt`, verify.on_corrupt: skip) stands alone, to be
    excluded by verify."""

    near_bits: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip_corrupt: bool = False


class _Groups:
    """Union-find over image indices: images sharing pixels or a patient end up in one group."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(j)] = self.find(i)

    def join_by(self, keys: list[str | None]) -> None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                self.union(first.setdefault(key, i), i)


def image_groups(files: list[Path], patients: list[str | None], grouping: Grouping = Grouping()) -> list[int]:
    """A group id per file: files with identical pixels, near-identical ones (perceptual hash
    within `grouping.near_bits`) or one patient share a group, which splits and folds never separate."""
    groups = _Groups(len(files))
    digests: list[str | None] = []
    decoded, hashes, thumbs = [], [], []
    for i, path in enumerate(files):
        record = read_file("", path, grouping.max_pixels)
        if record.problem:
            if not grouping.skip_corrupt:
                raise DatasetError(
                    f"cannot split the dataset: {record.why}; remove or replace it, or set verify.on_corrupt: skip"
                )
            print(f"warning: {record.why}; split on its own, verify.on_corrupt: skip will leave it out")
            digests.append(None)
            continue
        digests.append(record.digest)
        decoded.append(i)
        hashes.append(record.dhash)
        thumbs.append(record.thumb)
    groups.join_by(digests)
    groups.join_by(patients)
    if hashes:
        for i, j in near_pairs(np.stack(hashes), grouping.near_bits, thumbs):
            groups.union(decoded[i], decoded[j])
    return [groups.find(i) for i in range(len(files))]


def _shuffled_groups(group: list[int], strata: list[str], seed: int) -> Iterator[list[int]]:
    """Per stratum (sorted), the group ids of that stratum (a group's stratum is its first file's)
    in one seeded order: the deal that splits and folds share."""
    rng = random.Random(seed)
    roots = sorted(set(group))
    for stratum in sorted(set(strata)):
        members = [r for r in roots if strata[r] == stratum]
        rng.shuffle(members)
        yield members


def assign_splits(
    files: list[Path],
    strata: list[str],
    patients: list[str | None],
    val: float,
    test: float,
    seed: int,
    grouping: Grouping = Grouping(),
) -> list[str]:
    """A split name per file: stratified by `strata`, seeded, and never separating files with
    identical pixels, near-identical ones (perceptual hash within `near_bits`) or one patient."""
    return split_groups(image_groups(files, patients, grouping), strata, val, test, seed)


def split_groups(group: list[int], strata: list[str], val: float, test: float, seed: int) -> list[str]:
    """A split name per file of already grouped files (`group[i]`: the index of its group's first
    file): whole groups, `test` and `val` fractions of them per stratum, in a seeded order."""
    split_of_group = {}
    for members in _shuffled_groups(group, strata, seed):
        n_test, n_val = round(len(members) * test), round(len(members) * val)
        for i, root in enumerate(members):
            split_of_group[root] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [split_of_group[g] for g in group]


def regroup(group: list[int], members: list[int]) -> list[int]:
    """`group` restricted to the files `members` (indices into it), renumbered so that each group id
    is the position of its first member in `members`, as `image_groups` numbers them."""
    first: dict[int, int] = {}
    return [first.setdefault(group[j], i) for i, j in enumerate(members)]


def assign_folds(group: list[int], strata: list[str], k: int, seed: int) -> list[int]:
    """A fold (0..k-1) per file: whole groups dealt out per stratum in a seeded order, each to the
    fold holding the fewest files of that stratum so far (folds stratified and about equal)."""
    size_of = {g: group.count(g) for g in set(group)}
    fold_of_group = {}
    for members in _shuffled_groups(group, strata, seed):
        size = [0] * k
        for g in members:
            fold = min(range(k), key=lambda f: (size[f], f))
            fold_of_group[g] = fold
            size[fold] += size_of[g]
    return [fold_of_group[g] for g in group]
