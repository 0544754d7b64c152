"""Every run of the comparison grid is a valid set of params."""

import copy

import pytest
import yaml

from cxr.config import _Yaml12FloatLoader, parse_params
from sweeps.grid import DEMO_OVERRIDES, grid
from tests.conftest import REPO


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """What `dvc exp run -S key=value` does to params.yaml (values parsed as YAML)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        assert leaf in node, f"{key} is not a key of params.yaml"
        node[leaf] = yaml.load(value, Loader=_Yaml12FloatLoader)  # noqa: S506 (a SafeLoader)
    return raw


@pytest.mark.parametrize("demo", [False, True])
def test_every_grid_run_validates(demo):
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    runs = grid("none" if demo else "imagenet")
    assert len({name for name, _ in runs}) == len(runs) == 21
    for name, overrides in runs:
        params = parse_params(apply_overrides(base, overrides + (DEMO_OVERRIDES if demo else [])))
        if name.startswith("t1-"):
            assert params.train.freeze == "backbone"
        if name == "t2-vgg16-partial":
            assert params.train.freeze == [0, 2, 5, 10, 24, 28]
        if name.startswith("p2-"):
            assert params.data.task == "multilabel" and params.train.schedule.milestones == [2]


@pytest.mark.parametrize("demo", [False, True])
def test_every_grid_run_composes_the_same_through_hydra(tmp_path, monkeypatch, demo):
    """With hydra.enabled (issue 23's recipes) DVC hands -S values to Hydra's override grammar, not YAML:
    every grid run must give the same params both ways."""
    from dvc.utils.hydra import compose_and_dump

    from cxr.config import load_params

    monkeypatch.chdir(REPO)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, overrides in grid("none" if demo else "imagenet"):
        overrides = overrides + (DEMO_OVERRIDES if demo else [])
        wanted = parse_params(apply_overrides(base, overrides))
        out = tmp_path / f"{name}.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), overrides)
        assert load_params(out) == wanted, name


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("with_txrv", [False, True])
def test_every_label_efficiency_run_validates(demo, with_txrv):
    from sweeps.label_efficiency import DEMO, FRACTIONS, runs

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    planned = runs(with_txrv)
    assert len({name for name, _ in planned}) == len(planned) == 4 * (3 if with_txrv else 2)
    for name, overrides in planned:
        params = parse_params(apply_overrides(base, overrides + (DEMO if demo else [])))
        assert params.data.label_fraction in FRACTIONS and name.endswith(f"-{round(params.data.label_fraction * 100)}")
        starting = {"le-scratch": "none", "le-pretrained": "pretrained", "le-txrv": "txrv:densenet121-res224-all"}
        assert params.train.weights == starting[name.rsplit("-", 1)[0]]
        assert (params.pretrain.method == "simclr") == (params.train.weights == "pretrained")


def test_label_efficiency_scores_carry_their_intervals():
    from cxr.evaluate.screening import exact_interval
    from sweeps.label_efficiency import scored

    true = ["covid"] * 30 + ["normal"] * 70
    predicted = ["covid"] * 24 + ["normal"] * 6 + ["normal"] * 63 + ["covid"] * 7
    result = scored(true, predicted)
    assert result["n"] == 100 and result["accuracy"] == 0.87
    assert [result["accuracy_lo"], result["accuracy_hi"]] == exact_interval(87, 100)
    assert result["f1_macro_lo"] < result["f1_macro"] < result["f1_macro_hi"]
    assert scored(true, predicted) == result  # seeded
