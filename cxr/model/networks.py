"""torchvision networks with a new fully connected head, pretrained weights and freezing.

Where each family's classifier sits, and what integer freeze entries mean, is read from the
table in cxr/model/architectures.py; nothing here names a family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import get_model

from cxr.config import PRETRAINED, XRV_PREFIX
from cxr.errors import ConfigError
from cxr.model.architectures import FAMILY_OF_ARCH, Family, family_of, replace_module, submodule
from cxr.model.weights import WeightsError, imagenet_state_dict, local_state_dict, pretrained_state_dict
from cxr.model.xray_weights import xray_state_dict

HEAD_ATTRIBUTE = "cxr_head"  # build_model records the head's dotted name under this attribute
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Head(nn.Sequential):
    """The newly initialised layers on top of the CNN: what `freeze: backbone` leaves trainable."""


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


def replaced_layer(family: Family, keep_classifier: bool) -> str:
    """Dotted name of the module the new head takes the place of."""
    return family.last_layer if keep_classifier else family.head


@torch.no_grad()
def feature_width(model: nn.Module, image_size: int, replaced: str | None = None, in_channels: int = 3) -> int:
    """Width of the features reaching `replaced` (default: the family's head), measured by a
    forward pass (never hard-coded)."""
    path = replaced or family_of(model).head
    original = replace_module(model, path, nn.Identity())
    was_training = model.training
    try:
        model.eval()
        return int(model(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])
    finally:
        replace_module(model, path, original)
        model.train(was_training)


def adapt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViT: position embeddings of the weights' image size, interpolated to the model's."""
    if family_of(model).sized and "encoder.pos_embedding" in state:
        from torchvision.models.vision_transformer import interpolate_embeddings

        return interpolate_embeddings(model.image_size, model.patch_size, state)
    return state


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, replaced: str) -> None:
    """Load every tensor of `state` but those of the `replaced` classifier layer(s) into `model`."""
    prefix = replaced + "."
    backbone = {k: v for k, v in adapt_state(model, state).items() if not k.startswith(prefix)}
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


def one_channel_stem(model: nn.Module) -> None:
    """Replace the family's first convolution by one reading a single channel (torchxrayvision's networks)."""
    family = family_of(model)
    if not family.stem:
        raise ConfigError(f"{type(model).__name__}: one-channel input is supported for ResNet and DenseNet only")
    old = submodule(model, family.stem)
    replace_module(
        model,
        family.stem,
        nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None),
    )


def backbone(
    arch: str, image_size: int, weights: str = "none", keep_classifier: bool = False, in_channels: int = 3
) -> tuple[nn.Module, str]:
    """A torchvision `arch` with `weights` loaded, and the dotted name of the layer a new head replaces.

    With `keep_classifier`, a multi-layer classifier (VGG's 4096-4096, EfficientNet's and MobileNet's dropout) is
    kept, pretrained, and only its last layer is to be replaced. `in_channels` 1 gives it a one-channel first
    convolution (what `txrv:` weights were trained with).
    """
    sized = arch in FAMILY_OF_ARCH and FAMILY_OF_ARCH[arch].sized
    model = get_model(arch, weights=None, **({"image_size": image_size} if sized else {}))
    family = family_of(model)
    if keep_classifier and not family.last_layer:
        raise ConfigError(f"train.head.keep_classifier: {arch} has a single-layer classifier; set it to false")
    if in_channels == 1:
        one_channel_stem(model)
    replaced = replaced_layer(family, keep_classifier)
    if weights == "imagenet":
        load_backbone_weights(model, imagenet_state_dict(arch), "imagenet", replaced)
    elif weights == PRETRAINED:
        load_backbone_weights(model, pretrained_state_dict(arch), weights, replaced)
    elif weights.startswith(XRV_PREFIX):
        state, _, _ = xray_state_dict(weights)
        load_backbone_weights(model, state, weights, replaced)
    elif weights != "none":
        load_backbone_weights(model, local_state_dict(weights), weights, replaced)
    return model, replaced


def add_head(
    model: nn.Module,
    replaced: str,
    num_outputs: int,
    hidden: Sequence[int],
    dropout: float,
    image_size: int,
    activation: str = "relu",
    in_channels: int = 3,
) -> nn.Module:
    """`model` with the new head (`make_head`) in place of its `replaced` layer."""
    old = submodule(model, replaced)
    width = (
        old.in_features if isinstance(old, nn.Linear) else feature_width(model, image_size, replaced, in_channels)
    )
    replace_module(model, replaced, make_head(width, hidden, dropout, num_outputs, activation))
    setattr(model, HEAD_ATTRIBUTE, replaced)  # where the head is, recorded by the one code that put it there
    return model


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
    """A torchvision `arch` (three input channels) with `weights` loaded into its backbone and a new head."""
    model, replaced = backbone(arch, image_size, weights, keep_classifier)
    return add_head(model, replaced, num_outputs, hidden, dropout, image_size, activation)


def head_name(model: nn.Module) -> str:
    """Dotted name of the new head module (`fc`, `classifier`, `classifier.6`, `heads`, ...), as
    `build_model` recorded it."""
    name = getattr(model, HEAD_ATTRIBUTE, None)
    if name is None:
        raise ValueError(f"{type(model).__name__}: no new head found; build it with build_model")
    return name


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_frozen(model: nn.Module, mode: str | Sequence[str | int]) -> Callable[[str], bool]:
    """Predicate on parameter names: is this parameter frozen under `mode`?

    `none`: nothing; `backbone`: everything but the new head; `head`: the new head only; a list:
    those modules, where an integer i means the family's indexed container (`features.i` for
    VGG/EfficientNet/MobileNet/ConvNeXt/Swin). Every entry must match a parameter.
    """
    head = head_name(model)
    if mode == "none":
        return lambda name: False
    if mode == "backbone":
        return lambda name: not _under(name, head)
    if mode == "head":
        return lambda name: _under(name, head)
    indexed = family_of(model).indexed
    if indexed is None and any(isinstance(p, int) for p in mode):
        raise ConfigError(
            f"train.freeze: {type(model).__name__} has no numbered feature layers; "
            f"use module names such as {', '.join(n for n, _ in model.named_children())}"
        )
    prefixes = [f"{indexed}.{p}" if isinstance(p, int) else str(p) for p in mode]
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_under(n, prefix) for n in names):
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(
                f"train.freeze: {prefix!r} matches no parameter of this model; "
                f"use module names such as {children} (or {indexed or 'features'} indices of layers with weights)"
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


def train_mode(model: nn.Module, freeze_mode: str | Sequence[str | int] = "none", frozen_bn_eval: bool = True) -> None:
    """model.train(), except where parameters are frozen.

    `freeze: backbone` makes the backbone a fixed feature extractor: everything but the new
    head runs in eval mode (BatchNorm running stats, no dropout or stochastic depth), which is
    what lets its features be computed once (cxr/train/features.py). Under the other modes,
    with `frozen_bn_eval`, BatchNorm layers whose parameters are frozen keep their running
    statistics (Lightning's `train_bn=False`); without it they update them like the rest.
    """
    if freeze_mode == "backbone":
        model.eval()
        model.get_submodule(head_name(model)).train()
        return
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if frozen_bn_eval and params and not any(p.requires_grad for p in params):
                module.eval()
