"""Fold ensembles: the average of the members' probabilities, loaded, identified and exported as one model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.data.radiograph import BASE
from cxr.model.checkpoint import CheckpointError, save_checkpoint
from cxr.model.ensemble import Ensemble, explained, identity, load_scorer, member_paths, scored_paths
from cxr.model.export import export
from cxr.model.inference import IMAGENET_MEAN, IMAGENET_STD
from cxr.model.spec import ModelSpec


def spec_for(loss: str, classes=("covid", "normal", "pneumonia")) -> ModelSpec:
    task = "multiclass" if loss == "ce" else "multilabel"
    return ModelSpec("resnet18", classes, task, loss, (8,), 0.0, "relu", False, 32, IMAGENET_MEAN, IMAGENET_STD, BASE)


def members(spec: ModelSpec, n: int = 3) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(spec.build().eval())
    return out


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_the_ensemble_gives_the_mean_of_its_members_probabilities(loss):
    spec = spec_for(loss)
    nets = members(spec)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        mean = torch.stack([spec.probabilities(m(x)) for m in nets]).mean(0)
        got = spec.probabilities(Ensemble(nets, loss).eval()(x))
    assert torch.allclose(got, mean, atol=1e-5)


def test_fold_checkpoints_load_as_one_model_with_one_identity(tmp_path):
    spec = spec_for("ce")
    for fold, net in enumerate(members(spec)):
        save_checkpoint(tmp_path / "cv" / f"fold{fold}" / "model.pt", net, spec, epoch=fold + 1)
    (tmp_path / "cv" / "fold10").mkdir()  # no checkpoint: not a member
    paths = member_paths(tmp_path / "cv")
    assert [p.parent.name for p in paths] == ["fold0", "fold1", "fold2"]
    assert scored_paths("folds", tmp_path / "model.pt", tmp_path / "cv") == paths
    assert scored_paths("none", tmp_path / "model.pt", tmp_path / "cv") == [tmp_path / "model.pt"]
    model, loaded, payload = load_scorer(paths)
    assert isinstance(model, Ensemble) and loaded == spec and payload["epoch"] == [1, 2, 3]
    assert explained(model) is model.members[0]
    assert identity(paths) != identity(paths[:2]) and identity(paths[:1]) == identity([paths[0]])
    other = spec_for("ce", ("covid", "normal"))
    save_checkpoint(tmp_path / "cv" / "fold3" / "model.pt", members(other, 1)[0], other, epoch=1)
    with pytest.raises(CheckpointError, match=r"fold3/model.pt: its spec differs"):
        load_scorer(member_paths(tmp_path / "cv"))
    with pytest.raises(CheckpointError, match="no fold checkpoints .* needs data.folds"):
        member_paths(tmp_path / "empty")


def test_the_ensemble_exports_as_one_graph(tmp_path):
    spec = spec_for("ce")
    model = Ensemble(members(spec, 2), "ce").eval()
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 1, 32, 32), dtype=np.uint8))
    result = export(model, spec, pixels, tmp_path)
    assert result["images"] == 5 and result["onnx_max_abs_diff"] < 1e-4
