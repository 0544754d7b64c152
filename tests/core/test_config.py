import copy

import pytest
import yaml

from cxr.config import ConfigError, load_params, parse_params
from tests.conftest import REPO


@pytest.fixture
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train.arch in ("resnet18", "vgg16")
    assert params.data.source == "demo"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "arch", "resnet9000", "train.arch: 'resnet9000'"),
        ("train", "lr", -0.1, "train.lr: -0.1"),
        ("train", "lr", "0.01", "train.lr"),
        ("train", "epochs", 0, "train.epochs"),
        ("train", "freeze", "everything", "allowed values are 'none', 'backbone' or 'head'"),
        ("train", "weights", "resnet.ckpt", "train.weights"),
        ("data", "task", "regression", "data.task"),
        ("evaluate", "batch_size", 2.5, "evaluate.batch_size"),
        ("train", "batch_size", 1, "train.batch_size: 1 is not valid: must be 2 or more"),  # was a raw traceback
        ("train", "compile", "max-autotune", "train.compile: 'max-autotune' is not valid: use true, false or 'reduce"),
    ],
)
def test_bad_values_name_the_key(raw, section, key, value, expected):
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert expected in str(err.value)


def test_arch_error_lists_allowed_values(raw):
    raw["train"]["arch"] = "resnet9000"
    with pytest.raises(ConfigError, match="'resnet18', 'resnet50', 'vgg16'"):
        parse_params(raw)


def test_unknown_and_missing_keys(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"train\.learning_rate: unknown key"):
        parse_params(bad)
    bad = copy.deepcopy(raw)  # issue 23, item 5: a typo (`-S train.lrr=...` or DVC's `+train.lrr`) names the key meant
    bad["train"]["lrr"] = 0.1
    bad["evaluate"]["coverge"] = 0.9
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key; did you mean train\.lr\?") as error:
        parse_params(bad)
    assert "evaluate.coverge: unknown key; did you mean evaluate.coverage?" in str(error.value)
    bad = copy.deepcopy(raw)
    bad["train"]["zzzz"] = 1
    with pytest.raises(ConfigError) as error:
        parse_params(bad)
    assert "did you mean" not in str(error.value)
    bad = copy.deepcopy(raw)
    del bad["seed"]
    with pytest.raises(ConfigError, match="seed: required key is missing"):
        parse_params(bad)


def test_exponent_floats_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.lr=0.00001` writes `lr: 1e-05`, which plain PyYAML reads as a string
    text = (REPO / "params.yaml").read_text().replace("lr: 0.01", "lr: 1e-05")
    assert "lr: 1e-05" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.lr == pytest.approx(1e-5)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_params(listing)


def test_allowed_names_match_what_the_code_builds():
    from typing import get_args

    from cxr.config import PRESET_NAMES, HeadConfig, ScheduleConfig, TrainConfig
    from cxr.data.presets import PRESETS
    from cxr.model.architectures import ARCHS as ARCHITECTURES
    from cxr.model.networks import ACTIVATIONS
    from cxr.train.optim import OPTIMIZERS, SCHEDULES

    assert set(get_args(HeadConfig.model_fields["activation"].annotation)) == set(ACTIVATIONS)
    assert set(get_args(TrainConfig.model_fields["optimizer"].annotation)) == set(OPTIMIZERS)
    assert set(get_args(ScheduleConfig.model_fields["name"].annotation)) == set(SCHEDULES)
    assert get_args(TrainConfig.model_fields["arch"].annotation) == ARCHITECTURES  # same names, same order
    assert set(PRESET_NAMES) == set(PRESETS)
