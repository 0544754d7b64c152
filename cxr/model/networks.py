"""torchvision CNNs with a new fully connected head, pretrained weights and freezing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import get_model

from cxr.config import ConfigError
from cxr.model.weights import WeightsError, imagenet_state_dict, local_state_dict

# The attribute holding each family's ImageNet classifier: `fc` (ResNet), `classifier` (VGG,
# DenseNet, EfficientNet).
HEAD_ATTRS = ("fc", "classifier")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Head(nn.Sequential):
    """The newly initialised layers on top of the CNN: what `freeze: backbone` leaves trainable."""


def head_attr(model: nn.Module) -> str:
    """Name of the model's classifier attribute (`fc` for ResNet, `classifier` for VGG)."""
    for name in HEAD_ATTRS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__}: no classifier attribute among {HEAD_ATTRS}")


def make_head(
    in_features: int, hidden: Sequence[int], dropout: float, num_outputs: int, activation: str = "relu"
) -> Head:
    """Linear layers of the given hidden widths with an activation and dropout, then the output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_outputs))
    return Head(*layers)


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


def load_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, keep_classifier: bool = False
) -> None:
    """Load every tensor of `state` but the replaced classifier layer(s) into `model`."""
    attr = head_attr(model)
    prefix = f"{attr}.{len(getattr(model, attr)) - 1}." if keep_classifier else f"{attr}."
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
    activation: str = "relu",
    keep_classifier: bool = False,
) -> nn.Module:
    """A torchvision `arch` with `weights` loaded into its backbone and a new head.

    With `keep_classifier`, a multi-layer classifier (VGG's 4096-4096, EfficientNet's dropout)
    is kept, pretrained, and only its last linear layer is replaced by the new head.
    """
    model = get_model(arch, weights=None)
    attr = head_attr(model)
    if keep_classifier:
        classifier = getattr(model, attr)
        if not (isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear)):
            raise ConfigError(f"train.head.keep_classifier: {arch} has a single-layer classifier; set it to false")
    if weights == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(arch), "imagenet", keep_classifier)
    elif weights != "none":
        load_backbone_weights(model, local_state_dict(weights), weights, keep_classifier)
    if keep_classifier:
        classifier = getattr(model, attr)
        last = len(classifier) - 1
        classifier[last] = make_head(classifier[last].in_features, hidden, dropout, num_outputs, activation)
    else:
        width = feature_width(model, image_size)
        setattr(model, attr, make_head(width, hidden, dropout, num_outputs, activation))
    return model


def head_name(model: nn.Module) -> str:
    """Dotted name of the new head module (`fc`, `classifier` or `classifier.6`)."""
    for name, module in model.named_modules():
        if isinstance(module, Head):
            return name
    raise ValueError(f"{type(model).__name__}: no new head found; build it with build_model")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_frozen(model: nn.Module, mode: str | Sequence[str | int]) -> Callable[[str], bool]:
    """Predicate on parameter names: is this parameter frozen under `mode`?

    `none`: nothing; `backbone`: everything but the new head; `head`: the new head only; a list:
    those modules, where an integer i means `features.i` (a layer of VGG/DenseNet/EfficientNet's
    feature extractor). Every listed entry must match at least one parameter.
    """
    head = head_name(model)
    if mode == "none":
        return lambda name: False
    if mode == "backbone":
        return lambda name: not _under(name, head)
    if mode == "head":
        return lambda name: _under(name, head)
    prefixes = [f"features.{p}" if isinstance(p, int) else str(p) for p in mode]
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_under(n, prefix) for n in names):
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(
                f"train.freeze: {prefix!r} matches no parameter of this model; "
                f"use module names such as {children} (or features indices of layers with weights)"
            )
    return lambda name: any(_under(name, p) for p in prefixes)


def freeze(model: nn.Module, mode: str | Sequence[str | int]) -> int:
    """Apply a freeze mode (see `is_frozen`); return the count of trainable parameters."""
    frozen = is_frozen(model, mode)
    for name, param in model.named_parameters():
        param.requires_grad = not frozen(name)
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: nn.Module, freeze_mode: str | Sequence[str | int] = "none") -> None:
    """model.train(), except where parameters are frozen.

    `freeze: backbone` makes the backbone a fixed feature extractor: everything but the new
    head runs in eval mode (BatchNorm running stats, no dropout or stochastic depth), which is
    what lets its features be computed once (cxr/train/features.py). Under the other modes, BatchNorm
    layers whose parameters are frozen keep their running statistics.
    """
    if freeze_mode == "backbone":
        model.eval()
        model.get_submodule(head_name(model)).train()
        return
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
