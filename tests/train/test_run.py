"""Freeze modes, heads, losses, optimizers, schedules, non-finite losses and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from torchvision.models import get_model

from cxr.config import ConfigError, parse_params
from cxr.evaluate.scores import multilabel_scores
from cxr.model.losses import make_loss
from cxr.model.networks import Head, build_model, freeze, head_name, train_mode
from cxr.train import run as train_run
from cxr.train.loop import NonFiniteLossError
from cxr.train.optim import make_optimizer, make_schedule
from tests.conftest import tiny_params_dict, train_on

BN = nn.modules.batchnorm._BatchNorm
RESNET_PARTIAL = ["conv1", "bn1", "layer1", "layer2"]
VGG_PARTIAL = ["features.0", "features.2", "features.5", "features.10", "features.24", "features.28"]


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _step_and_check(model, mode, expected_frozen):
    """One SGD step; assert exactly the expected parameters got gradients and moved, and that
    BatchNorm running statistics moved only where the layer is trainable."""
    freeze(model, mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    train_mode(model)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    after = model.state_dict()
    for name, param in model.named_parameters():
        frozen = expected_frozen(name)
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
        assert torch.equal(before[name], after[name]) is frozen, name
    for name, module in model.named_modules():
        if isinstance(module, BN):
            frozen = expected_frozen(f"{name}.weight")
            assert module.training is not frozen, name
            assert torch.equal(before[f"{name}.running_mean"], after[f"{name}.running_mean"]) is frozen, name
            assert torch.equal(before[f"{name}.num_batches_tracked"], after[f"{name}.num_batches_tracked"]) is frozen


@pytest.mark.parametrize(
    ("mode", "expected_frozen"),
    [
        ("none", lambda n: False),
        ("backbone", lambda n: not n.startswith("fc.")),
        ("head", lambda n: n.startswith("fc.")),
        (RESNET_PARTIAL, lambda n: _under(n, RESNET_PARTIAL)),
    ],
    ids=["none", "backbone", "head", "conv1-bn1-layer1-layer2"],
)
def test_resnet_freeze_modes(mode, expected_frozen):
    torch.manual_seed(0)
    _step_and_check(build_model("resnet18", 2, [8], 0.0, 32), mode, expected_frozen)


@pytest.mark.parametrize("mode", [VGG_PARTIAL, [0, 2, 5, 10, 24, 28]], ids=["names", "indices"])
def test_vgg_partial_freeze_by_name_or_index(mode):
    torch.manual_seed(0)
    _step_and_check(build_model("vgg16", 2, [], 0.0, 32), mode, lambda n: _under(n, VGG_PARTIAL))


def test_freeze_entry_that_matches_nothing_is_named():
    model = build_model("resnet18", 2, [], 0.0, 32)
    with pytest.raises(ConfigError, match=r"train.freeze: 'layer9' matches no parameter.*conv1, bn1"):
        freeze(model, ["layer1", "layer9"])
    with pytest.raises(ConfigError, match="'features.1' matches no parameter"):  # a ReLU: nothing to freeze
        freeze(build_model("vgg16", 2, [], 0.0, 32), [1])


@pytest.mark.slow
def test_vgg_keep_classifier_replaces_only_the_last_layer(tmp_path):
    torch.manual_seed(3)
    source = get_model("vgg16")
    path = tmp_path / "vgg16.pth"
    torch.save(source.state_dict(), path)
    model = build_model("vgg16", 2, [500], 0.0, 32, weights=str(path), keep_classifier=True)
    assert head_name(model) == "classifier.6"
    assert torch.equal(model.classifier[3].weight, source.classifier[3].weight)  # pretrained 4096-4096 kept
    head = model.classifier[6]
    assert isinstance(head, Head) and (head[0].in_features, head[0].out_features, head[-1].out_features) == (
        4096,
        500,
        2,
    )
    freeze(model, "backbone")
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.6"}
    with pytest.raises(ConfigError, match="keep_classifier: resnet18 has a single-layer classifier"):
        build_model("resnet18", 2, [], 0.0, 32, keep_classifier=True)


@pytest.mark.parametrize(("arch", "width"), [("densenet121", 1024), ("efficientnet_b0", 1280), ("resnet50", 2048)])
def test_head_width_is_found_for_other_families(arch, width):
    model = build_model(arch, 3, [7], 0.1, 32, activation="gelu")
    head = model.get_submodule(head_name(model))
    assert head[0].in_features == width and isinstance(head[1], nn.GELU)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def _reference_focal(logits, targets, alpha, gamma):
    """Focal loss written out per element (Lin et al. 2017), then averaged."""
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    alpha_t = torch.where(targets == 1, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()


def test_focal_loss_matches_the_reference_and_reduces_to_bce():
    torch.manual_seed(0)
    logits = torch.randn(64, 3) * 3
    targets = (torch.rand(64, 3) > 0.6).float()
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.0), (0.9, 3.5)):
        got = make_loss("focal", 3, alpha, gamma)(logits, targets)
        assert torch.allclose(got, _reference_focal(logits, targets, alpha, gamma), atol=1e-6)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(make_loss("focal", 3, None, 0.0)(logits, targets), bce, atol=1e-6)
    assert torch.allclose(make_loss("bce", 3)(logits, targets), bce)
    # focal down-weights easy examples: far below BCE on confident, correct logits
    easy = make_loss("focal", 3, None, 2.0)(targets * 8 - 4, targets)
    assert easy < 0.01 * make_loss("bce", 3)(targets * 8 - 4, targets)


def test_class_index_targets_become_one_hot_for_sigmoid_losses():
    logits = torch.randn(5, 3)
    index = torch.tensor([0, 2, 1, 1, 0])
    one_hot = nn.functional.one_hot(index, 3).float()
    for name in ("bce", "focal"):
        loss = make_loss(name, 3)
        assert torch.allclose(loss(logits, index), loss(logits, one_hot))


def _train_cfg(**overrides):
    raw = tiny_params_dict(**overrides)
    return parse_params(raw).train


def test_step_schedule_raises_lr_after_milestone_and_cosine_decays():
    model = nn.Linear(2, 2)
    cfg = _train_cfg(lr=1e-4, schedule={"name": "step", "milestones": [2], "factor": 10.0, "warmup": 0})
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_schedule(opt, cfg.schedule, 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: keeps the scheduler from warning about call order
        sched.step()
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    cfg = _train_cfg(
        schedule={"name": "cosine", "milestones": [], "factor": 0.1, "warmup": 0}, optimizer="adamw", momentum=0.0
    )
    opt = make_optimizer(model.parameters(), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    sched = make_schedule(opt, cfg.schedule, 4)
    for _ in range(4):
        opt.step()  # no gradients: keeps the scheduler from warning about call order
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    cfg = _train_cfg(nesterov=True, weight_decay=1e-4)
    opt = make_optimizer(model.parameters(), cfg)
    assert opt.defaults["nesterov"] and opt.defaults["weight_decay"] == 1e-4


def test_multilabel_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    targets = (rng.random((80, 3)) > 0.5).astype(np.float32)
    probs = np.clip(targets * 0.6 + rng.random((80, 3)) * 0.5, 0, 1)
    scores = multilabel_scores(targets, probs, ["covid", "pneumonia", "normal"])
    preds = probs >= 0.5
    assert scores["subset_accuracy"] == pytest.approx((preds == targets).all(1).mean())
    assert scores["f1_micro"] == pytest.approx(f1_score(targets, preds, average="micro"))
    assert scores["f1_macro"] == pytest.approx(f1_score(targets, preds, average="macro"))
    assert scores["per_class"]["normal"]["roc_auc"] == pytest.approx(roc_auc_score(targets[:, 2], probs[:, 2]))
    tn, fp, fn, tp = scores["per_class"]["covid"]["confusion_matrix_tn_fp_fn_tp"]
    assert tp == (preds[:, 0] & (targets[:, 0] == 1)).sum() and tn + fp + fn + tp == 80


def _run(tmp_path, demo_root, monkeypatch, sub, **overrides):
    work = tmp_path / sub
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    params = parse_params(tiny_params_dict(**overrides))
    best = train_on(params, demo_root, work)
    return work, best


def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_last_good(tmp_path, demo_root, monkeypatch):
    real = train_run.make_loss
    calls = {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        inner = real(*args, **kwargs)

        def loss(logits, targets):
            calls["n"] += 1
            value = inner(logits, targets)
            return value * float("nan") if calls["n"] == 5 else value  # 3 train batches/epoch + 1 val call

        return loss

    monkeypatch.setattr(train_run, "make_loss", loss_that_explodes)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 1/3 \(lr 0.01\).*Lower train.lr \(e.g. to 0.001\)"):
        _run(tmp_path, demo_root, monkeypatch, "nan")
    saved = torch.load(tmp_path / "nan/models/model.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert torch.load(tmp_path / "nan/models/last.pt", weights_only=True)["epoch"] == 1




