"""torchvision CNNs with a new fully connected head, pretrained weights and freezing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import get_model

from cxr.weights import WeightsError, imagenet_state_dict, local_state_dict

# The attribute holding each family's ImageNet classifier, replaced by the new head.
HEAD_ATTRS = ("fc", "classifier")


def head_attr(model: nn.Module) -> str:
    """Name of the model's classifier attribute (`fc` for ResNet, `classifier` for VGG)."""
    for name in HEAD_ATTRS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no classifier attribute among {HEAD_ATTRS}")


def make_head(in_features: int, hidden: Sequence[int], dropout: float, num_outputs: int) -> nn.Sequential:
    """Linear layers of the given hidden widths with ReLU and dropout, then the output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


@torch.no_grad()
def feature_width(model: nn.Module, image_size: int) -> int:
    """Width of the features reaching the head, measured by a forward pass (never hard-coded)."""
    attr = head_attr(model)
    original = getattr(model, attr)
    setattr(model, attr, nn.Identity())
    was_training = model.training
    try:
        model.eval()
        return int(model(torch.zeros(1, 3, image_size, image_size)).flatten(1).shape[1])
    finally:
        setattr(model, attr, original)
        model.train(was_training)


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every non-head tensor of `state` into `model`; the head stays freshly initialised."""
    attr = head_attr(model)
    prefix = f"{attr}."
    backbone = {k: v for k, v in state.items() if not k.startswith(prefix)}
    expected = {k for k in model.state_dict() if not k.startswith(prefix)}
    missing = sorted(expected - backbone.keys())
    unexpected = sorted(backbone.keys() - expected)
    if missing or unexpected:
        raise WeightsError(
            f"train.weights={source}: does not match this architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); "
            "is it a state dict for the same train.arch?"
        )
    try:
        model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"train.weights={source}: tensor shapes do not match train.arch: {exc}") from exc


def build_model(
    arch: str,
    num_outputs: int,
    hidden: Sequence[int],
    dropout: float,
    image_size: int,
    weights: str = "none",
) -> nn.Module:
    """A torchvision `arch` with `weights` loaded into its backbone and a new head."""
    model = get_model(arch, weights=None)
    if weights == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(arch), "imagenet")
    elif weights != "none":
        load_backbone_weights(model, local_state_dict(weights), weights)
    width = feature_width(model, image_size)
    setattr(model, head_attr(model), make_head(width, hidden, dropout, num_outputs))
    return model


def freeze(model: nn.Module, mode: str) -> int:
    """Apply a freeze mode (`none` or `backbone`); return the count of trainable parameters."""
    prefix = f"{head_attr(model)}."
    for name, param in model.named_parameters():
        param.requires_grad = mode == "none" or name.startswith(prefix)
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: nn.Module) -> None:
    """model.train(), except that BatchNorm layers with frozen parameters keep their running stats."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
