"""Stage pretrain (pretrain.method simclr): the loss, the file it writes, train starting from it, resume after a
kill, the folders' check against val and test films, and its params' bad values."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from cxr.checksums import sha256_of
from cxr.config import ConfigError, parse_params
from cxr.errors import PipelineError
from cxr.model.spec import initial_model, starting_point
from cxr.model.weights import WeightsError, pretrained_state_dict
from cxr.train import pretrain as pretraining
from cxr.train.pretrain import nt_xent, pretrain
from stages.decode import decode
from tests.conftest import tiny_params_dict


def pretrain_params(**pretrain_overrides):
    raw = tiny_params_dict()
    raw["pretrain"].update(method="simclr", epochs=2, batch_size=8, **pretrain_overrides)
    return raw


def test_nt_xent_is_simclrs_loss():
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    unit = torch.nn.functional.normalize(z, dim=1)
    n, t, total = 3, 0.5, 0.0
    for i in range(2 * n):
        twin = (i + n) % (2 * n)
        others = [math.exp(float(unit[i] @ unit[k]) / t) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(unit[i] @ unit[twin]) / t) / sum(others))
    assert float(nt_xent(z, t)) == pytest.approx(total / (2 * n), rel=1e-5)
    same = torch.cat([unit[:3], unit[:3]])
    assert float(nt_xent(same, 0.05)) < float(nt_xent(z, 0.05))  # views that agree cost less


@pytest.fixture
def pretrained(tmp_path, demo_root):
    """A tiny demo store and two epochs of SimCLR on its train split."""
    params = parse_params(pretrain_params())
    decode(params, demo_root, tmp_path / "data/decoded", tmp_path / "no-data.json")
    paths = {"store_dir": tmp_path / "data/decoded", "raw_dir": demo_root, "out": tmp_path / "models/pretrained.pt",
             "last": tmp_path / "models/.pretrain.last.pt", "live_dir": tmp_path / "metrics/pretrain",
             "metrics": tmp_path / "metrics/pretrain.json"}  # fmt: skip
    result = pretrain(params, **paths)
    return params, paths, result


def test_pretraining_writes_the_backbone_its_metrics_and_curve(pretrained):
    params, paths, result = pretrained
    assert result["films"] == {"train": 24} and result["epochs"] == 2 and math.isfinite(result["loss"])
    assert result["sha256"] == sha256_of(paths["out"])
    assert json.loads(paths["metrics"].read_text()) == result
    curve = (paths["live_dir"] / "plots/metrics/loss.tsv").read_text().splitlines()
    assert curve[0] == "step\tloss" and len(curve) == 3
    state = pretrained_state_dict("resnet18", paths["out"])
    assert "conv1.weight" in state and not any(k.startswith("fc.") for k in state)
    with pytest.raises(WeightsError, match="not vgg16"):
        pretrained_state_dict("vgg16", paths["out"])


def test_train_starts_from_it_and_names_its_sha256(pretrained, tmp_path, monkeypatch):
    params, paths, result = pretrained
    monkeypatch.chdir(tmp_path)  # models/pretrained.pt, where train.weights: pretrained reads it
    raw = pretrain_params()
    raw["train"]["weights"] = "pretrained"
    model, _, _ = initial_model(parse_params(raw), ("infected", "normal"))
    assert torch.equal(model.conv1.weight, pretrained_state_dict("resnet18", paths["out"])["conv1.weight"])
    assert starting_point("pretrained")["sha256"] == result["sha256"]


def test_a_killed_pretraining_resumes_to_the_same_backbone(pretrained, tmp_path, monkeypatch):
    params, paths, result = pretrained
    again = {**paths, "out": tmp_path / "again.pt", "live_dir": tmp_path / "again", "metrics": tmp_path / "a.json"}
    calls, real = [], pretraining.epoch_loss

    def killed_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pretraining, "epoch_loss", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(params, **again)
    assert not again["out"].exists()
    monkeypatch.setattr(pretraining, "epoch_loss", real)
    raw = pretrain_params(resume=True)
    resumed = pretrain(parse_params(raw), **again)
    assert resumed["loss"] == result["loss"]
    ours, theirs = (pretrained_state_dict("resnet18", p) for p in (paths["out"], again["out"]))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (again["live_dir"] / "plots/metrics/loss.tsv").read_text() == (
        paths["live_dir"] / "plots/metrics/loss.tsv").read_text()  # fmt: skip


def test_a_folder_holding_a_copy_of_a_test_film_is_refused_naming_it(tmp_path, demo_root):
    params = parse_params(pretrain_params(folders=[str(tmp_path / "archive")]))
    decode(params, demo_root, tmp_path / "data/decoded", tmp_path / "no-data.json")
    archive = tmp_path / "archive"
    archive.mkdir()
    films = sorted((demo_root / "train").rglob("*.png"))
    for film in films[:3]:  # train films are fine: their labels are ignored anyway
        shutil.copy(film, archive / f"unlabelled-{film.name}")
    kw = {"store_dir": tmp_path / "data/decoded", "raw_dir": demo_root, "out": tmp_path / "p.pt",
          "last": tmp_path / "l.pt", "live_dir": tmp_path / "live", "metrics": tmp_path / "m.json"}  # fmt: skip
    assert pretrain(params, **kw)["films"] == {"train": 24, str(archive): 3}
    test_film = sorted((demo_root / "test").rglob("*.png"))[0]
    shutil.copy(test_film, archive / "copied.png")
    (tmp_path / "p.pt").unlink()
    with pytest.raises(PipelineError, match="repeat a val or test film") as info:
        pretrain(params, **kw)
    assert str(archive / "copied.png") in str(info.value)
    assert not (tmp_path / "p.pt").exists()


def test_method_none_writes_a_file_without_a_backbone(tmp_path):
    params = parse_params(tiny_params_dict())
    result = pretrain(params, out=tmp_path / "p.pt", live_dir=tmp_path / "live", metrics=tmp_path / "m.json")
    assert result == {"method": "none"}
    with pytest.raises(WeightsError, match="holds no backbone"):
        pretrained_state_dict("resnet18", tmp_path / "p.pt")
    first = (tmp_path / "p.pt").read_bytes()
    pretrain(params, out=tmp_path / "p.pt", live_dir=tmp_path / "live", metrics=tmp_path / "m.json")
    assert (tmp_path / "p.pt").read_bytes() == first  # byte-stable: nothing after it reruns


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"weights": "pretrained"}}, "pretrain.method is 'none'"),
        ({"pretrain": {"method": "byol"}}, "pretrain.method"),
        ({"pretrain": {"batch_size": 2}}, "pretrain.batch_size"),
        ({"pretrain": {"temperature": 0}}, "pretrain.temperature"),
        ({"pretrain": {"method": "simclr", "views": {"crop": 1.0, "rotate": 0.0, "hflip": 0.0}}}, "must differ"),
        ({"pretrain": {"folders": [""]}}, "pretrain.folders"),
        ({"pretrain": {"method": "simclr"}, "train": {"weights": "pretrained"}, "data": {"folds": "source"}},
         "per-fold pretraining is not built yet"),
    ],
)
def test_bad_pretrain_values_are_refused_by_name(change, message):
    raw = tiny_params_dict()
    for section, values in change.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raw[section][key].update(value)
            else:
                raw[section][key] = value
    with pytest.raises(ConfigError, match="pretrain") as info:
        parse_params(raw)
    assert message in str(info.value)
