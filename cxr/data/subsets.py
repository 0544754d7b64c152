"""`data.label_fraction`: the share of the train split's labels a run may use, for label-efficiency curves."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def label_subset(strata: Sequence[str], patients: Sequence[str], fraction: float, seed: int) -> list[int]:
    """Rows (in order) of a seeded, class-stratified, patient-grouped `fraction` of a split.

    A patient's films come together or not at all (a film without a patient id is a patient of its own); each
    patient counts for the class of its first film. Per class, patients are drawn in a seeded order until the
    class holds round(fraction x its films) films (at least one): the same seed and fraction give the same rows,
    and a larger fraction holds every row of a smaller one.
    """
    n = len(strata)
    if fraction >= 1.0:
        return list(range(n))
    members: dict[str, list[int]] = {}
    for i, patient in enumerate(patients):
        members.setdefault(patient or f"\0film{i}", []).append(i)
    by_class: dict[str, list[str]] = {}
    for key, rows in members.items():
        by_class.setdefault(strata[rows[0]], []).append(key)
    films = {c: sum(len(members[k]) for k in keys) for c, keys in by_class.items()}
    rng = random.Random(seed)
    chosen: list[int] = []
    for stratum in sorted(by_class):
        keys = sorted(by_class[stratum])
        rng.shuffle(keys)
        target, kept = max(1, math.floor(fraction * films[stratum] + 0.5)), 0
        for key in keys:
            if kept >= target:
                break
            chosen += members[key]
            kept += len(members[key])
    return sorted(chosen)
