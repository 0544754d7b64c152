"""data.label_fraction: a seeded, class-stratified, patient-grouped share of the train split; val and test untouched."""

from __future__ import annotations

import pytest

from cxr.config import ConfigError, parse_params
from cxr.data.subsets import label_subset
from tests.conftest import tiny_params_dict, train_on

STRATA = ["covid"] * 20 + ["normal"] * 60
PATIENTS = [f"p{i // 3}" for i in range(80)]  # three films a patient (one patient spans both classes)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_each_class_keeps_its_share_and_each_patient_stays_whole(fraction):
    rows = label_subset(STRATA, PATIENTS, fraction, seed=42)
    assert rows == sorted(rows)
    for stratum, films in (("covid", 20), ("normal", 60)):
        kept = sum(1 for i in rows if STRATA[i] == stratum)
        assert abs(kept - fraction * films) <= 3, (stratum, kept)  # within one patient of the target
    chosen = {PATIENTS[i] for i in rows}
    assert {i for i, p in enumerate(PATIENTS) if p in chosen} == set(rows)  # a patient's films all, or none


def test_seeded_and_nested():
    assert label_subset(STRATA, PATIENTS, 0.25, 1) == label_subset(STRATA, PATIENTS, 0.25, 1)
    assert label_subset(STRATA, PATIENTS, 0.25, 1) != label_subset(STRATA, PATIENTS, 0.25, 2)
    small, large = (set(label_subset(STRATA, PATIENTS, f, 7)) for f in (0.1, 0.5))
    assert small < large  # the 10% films are among the 50% ones: the curve adds labels, it does not swap them
    assert label_subset(STRATA, PATIENTS, 1.0, 7) == list(range(80))


def test_films_without_patients_are_their_own_and_every_class_keeps_one():
    rows = label_subset(["a", "a", "b"] + ["c"] * 97, [""] * 100, 0.01, seed=0)
    strata = ["a", "a", "b"] + ["c"] * 97
    assert sorted(strata[i] for i in rows) == ["a", "b", "c"]  # one film of each class at 1%


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, "half"])
def test_bad_fractions_are_refused_by_name(value):
    raw = tiny_params_dict()
    raw["data"]["label_fraction"] = value
    with pytest.raises(ConfigError, match="data.label_fraction"):
        parse_params(raw)


def test_training_uses_the_share_and_validation_is_untouched(tmp_path, demo_root, capsys):
    raw = tiny_params_dict(epochs=1)
    raw["data"]["label_fraction"] = 0.5
    train_on(parse_params(raw), demo_root, tmp_path)
    out = capsys.readouterr().out
    assert "data.label_fraction 0.5: 12 of 24 training films" in out
    assert "12 train / 12 val images" in out
