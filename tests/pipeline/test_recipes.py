"""The real-data recipes as Hydra config groups (issue 23, item 8): `dvc exp run -S recipe=<name>` composes
conf/config.yaml (params.yaml + conf/recipe/<name>.yaml + the other -S values) into params.yaml with DVC's own
composer; each recipe gives valid params that differ from params.yaml in exactly the recipe's keys."""

from __future__ import annotations

import configparser

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from cxr.config import load_params
from scripts.results import flatten as _flat
from tests.conftest import REPO

RECIPES = sorted(p.stem for p in (REPO / "conf/recipe").glob("*.yaml"))


def _recipe_keys(name: str) -> dict:
    """The keys a recipe file sets, with those of the recipes it builds on (its defaults list)."""
    tree = yaml.safe_load((REPO / f"conf/recipe/{name}.yaml").read_text()) or {}
    out = {}
    for base in tree.pop("defaults", []):
        if isinstance(base, str) and base != "_self_":
            out.update(_recipe_keys(base))
    out.update(_flat(tree))
    return out


def test_hydra_is_enabled_for_experiments():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    assert config.get("hydra", "enabled", fallback="false") == "true"
    assert {"none", "real_scratch", "real_scratch_gpu", "real_transfer"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_composes_into_valid_params_that_change_exactly_its_keys(tmp_path, monkeypatch, recipe):
    monkeypatch.chdir(REPO)  # the search path's file://. is the repository root, where dvc exp run composes
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), [f"recipe={recipe}", "data.folder=/data/x"])
    composed = _flat(load_params(out).model_dump())
    base = _flat(load_params(REPO / "params.yaml").model_dump())
    changed = {k: v for k, v in composed.items() if base.get(k) != v}
    wanted = {k: v for k, v in {**_recipe_keys(recipe), "data.folder": "/data/x"}.items() if base.get(k) != v}
    assert changed == wanted
    if recipe == "real_scratch_gpu":  # built on real_scratch, at the GPU's size
        assert composed["train.image_size"] == 224 and composed["train.optimizer"] == "adamw"
