"""What the project knows about each torchvision family: one entry per family, keyed by its class.

Each entry says where the ImageNet classifier sits and what replaces it, which layer Grad-CAM
reads, and what integer `train.freeze` entries index. Adding an architecture is one line here
(a name in `archs`), or one entry for a new family; config's allowed `train.arch` values equal
ARCHS (tests/test_config.py) and every one of them is built, trained a step and explained by
Grad-CAM in tests/test_architectures.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    archs: tuple[str, ...]  # the `train.arch` names of this family that the project supports
    head: str  # the module the new head replaces (its input is the backbone's pooled features)
    last_layer: str  # with head.keep_classifier: the classifier's last layer, replaced alone ("": none to keep)
    gradcam: str  # the module whose output Grad-CAM weighs; "-1" picks a container's last child
    # where Grad-CAM finds a finer map when `gradcam`'s is under 7 x 7 at the image size (ResNet18's
    # layer4 is 2 x 2 at 64 px): "children" (the container's own layers), "siblings" (the model's
    # layers up to it), "" (none: a transformer's patch grid is its resolution)
    finer: str = ""
    indexed: str | None = None  # what an integer train.freeze entry i means: f"{indexed}.{i}"
    sized: bool = False  # the builder needs the image size (ViT's position embeddings)
    stem: str = ""  # the first convolution: made one-channel for one-channel weights (torchxrayvision's)


FAMILIES: dict[str, Family] = {  # keyed by torchvision's class name
    "ResNet": Family(
        ("resnet18", "resnet50"), head="fc", last_layer="", gradcam="layer4", finer="siblings", stem="conv1"
    ),
    "VGG": Family(
        ("vgg16",),
        head="classifier",
        last_layer="classifier.6",
        gradcam="features",
        finer="children",
        indexed="features",
    ),
    # DenseNet names its feature layers (features.denseblock1, ...): no integer freeze entries
    "DenseNet": Family(
        ("densenet121",), head="classifier", last_layer="", gradcam="features", finer="children", stem="features.conv0"
    ),
    "EfficientNet": Family(
        ("efficientnet_b0", "efficientnet_v2_s"),
        head="classifier",
        last_layer="classifier.1",
        gradcam="features",
        finer="children",
        indexed="features",
    ),
    "MobileNetV2": Family(
        ("mobilenet_v2",),
        head="classifier",
        last_layer="classifier.1",
        gradcam="features",
        finer="children",
        indexed="features",
    ),
    "MobileNetV3": Family(
        ("mobilenet_v3_small", "mobilenet_v3_large"),
        head="classifier",
        last_layer="classifier.3",
        gradcam="features",
        finer="children",
        indexed="features",
    ),
    "RegNet": Family(("regnet_y_400mf",), head="fc", last_layer="", gradcam="trunk_output", finer="children"),
    # ConvNeXt's classifier is LayerNorm2d + Flatten + Linear: the norm and flatten are part of
    # the features, so only the Linear is ever replaced
    "ConvNeXt": Family(
        ("convnext_tiny",), head="classifier.2", last_layer="", gradcam="features", finer="children", indexed="features"
    ),
    # ViT: the class token reaches `heads`; Grad-CAM reads the patch tokens entering the last
    # block (after it, only the class token matters and patch gradients vanish)
    "VisionTransformer": Family(
        ("vit_b_16",), head="heads", last_layer="", gradcam="encoder.layers.-1.ln_1", sized=True
    ),
    # Swin: `permute` turns the last stage's (N, H, W, C) map into (N, C, H, W)
    "SwinTransformer": Family(("swin_t",), head="head", last_layer="", gradcam="permute", indexed="features"),
}

ARCHS: tuple[str, ...] = tuple(arch for family in FAMILIES.values() for arch in family.archs)
FAMILY_OF_ARCH: dict[str, Family] = {arch: family for family in FAMILIES.values() for arch in family.archs}


def family_of(model: nn.Module) -> Family:
    """The table entry for a torchvision model."""
    name = type(model).__name__
    if name not in FAMILIES:
        raise ValueError(f"{name}: not in cxr/model/architectures.py FAMILIES ({', '.join(FAMILIES)})")
    return FAMILIES[name]


def submodule(model: nn.Module, path: str) -> nn.Module:
    """The module at a dotted `path`, where a part `-1` is a container's last child."""
    module = model
    for part in path.split(".") if path else ():
        module = list(module.children())[-1] if part == "-1" else getattr(module, part)
    return module


def resolve(model: nn.Module, path: str) -> str:
    """`path` with `-1` parts replaced by the child's real name (what named_modules reports)."""
    names, module = [], model
    for part in path.split("."):
        if part == "-1":
            part = list(dict(module.named_children()))[-1]
        names.append(part)
        module = getattr(module, part)
    return ".".join(names)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put `new` at dotted `path` in `model`; return the module it replaced."""
    parent_path, _, name = path.rpartition(".")
    parent = submodule(model, parent_path)
    old = getattr(parent, name)
    setattr(parent, name, new)
    return old
