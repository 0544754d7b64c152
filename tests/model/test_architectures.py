"""Every architecture of cxr/model/architectures.py trains through the real code path and is
explained by Grad-CAM; the table's facts (head, freeze indices, kept classifiers) hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.errors import ConfigError
from cxr.evaluate.gradcam import gradcam, gradcam_layer
from cxr.evaluate.run import evaluate
from cxr.model.architectures import ARCHS, FAMILIES, FAMILY_OF_ARCH
from cxr.model.networks import build_model, freeze, head_name, load_backbone_weights
from tests.conftest import tiny_params_dict, train_on

SIZE = 64  # at 32 px several families end in 1 x 1 maps; 64 px keeps every one spatial


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    raw = tiny_params_dict(epochs=1, image_size=SIZE)
    raw["data"]["demo"].update(image_size=SIZE, train_per_class=6, val_per_class=3, test_per_class=3)
    raw["evaluate"].update(bootstrap=0, grid_images=2)
    root = tmp_path_factory.mktemp("demo") / "raw"
    write_demo_dataset(root, parse_params(raw).data, 0)
    return raw, root


# the course's two architectures in the fast loop, every other family in the slow suite
COURSE_ARCHS = ("resnet18", "vgg16")


@pytest.mark.parametrize("arch", [a if a in COURSE_ARCHS else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def test_every_arch_trains_an_epoch_and_explains_its_decisions(arch, demo, tmp_path, monkeypatch):
    raw, root = demo
    params = parse_params({**raw, "train": {**raw["train"], "arch": arch}})
    monkeypatch.chdir(tmp_path)
    best = train_on(params, root, tmp_path)
    assert best["epoch"] == 1 and torch.isfinite(torch.tensor(best["val_loss"]))
    scores = evaluate(
        params,
        tmp_path / "models/model.pt",
        tmp_path / "data/decoded",
        root,
        tmp_path / "test.json",
        tmp_path / "predictions.csv",
        tmp_path / "eval",
    )
    assert scores["n"] == 6
    shares = scores["attribution"]  # where Grad-CAM put the evidence, over every test image
    assert shares["images"] == 6 and 0.0 <= shares["central_share"] <= 1.0 and 0.0 <= shares["frame_share"] <= 1.0
    assert (tmp_path / "eval/plots/images/gradcam.png").is_file()


@pytest.mark.parametrize("arch", ARCHS)
def test_table_facts_hold_for_every_arch(arch):
    torch.manual_seed(0)
    family = FAMILY_OF_ARCH[arch]
    model = build_model(arch, 3, (8,), 0.0, SIZE)
    assert head_name(model) == family.head
    trainable = freeze(model, "backbone")
    assert trainable == sum(p.numel() for p in model.get_submodule(family.head).parameters())
    x = torch.rand(2, 3, SIZE, SIZE)
    layer = gradcam_layer(model, x)
    cam = gradcam(model.eval(), x, torch.tensor([0, 2]), layer)
    assert cam.shape == (2, SIZE, SIZE) and torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    if family.indexed:  # integer freeze entries index the family's numbered layers
        with_weights = sorted({int(n.split(".")[1]) for n, _ in model.named_parameters() if n.startswith("features.")})
        freeze(model, [with_weights[0]])
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and all(n.startswith(f"{family.indexed}.{with_weights[0]}.") for n in frozen)
    else:
        with pytest.raises(ConfigError, match="no numbered feature layers"):
            freeze(model, [0])


@pytest.mark.parametrize("arch", [f.archs[0] for f in FAMILIES.values()])
def test_keep_classifier_only_where_there_is_one_to_keep(arch):
    family = FAMILY_OF_ARCH[arch]
    if not family.last_layer:
        with pytest.raises(ConfigError, match="single-layer classifier"):
            build_model(arch, 2, (8,), 0.0, SIZE, keep_classifier=True)
        return
    model = build_model(arch, 2, (8,), 0.0, SIZE, keep_classifier=True)
    assert head_name(model) == family.last_layer
    assert model(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 2)


def test_convnext_keeps_its_norm_and_flatten():
    model = build_model("convnext_tiny", 2, (), 0.0, SIZE)
    classifier = model.classifier
    assert isinstance(classifier[0], nn.Module) and isinstance(classifier[1], nn.Flatten)
    assert head_name(model) == "classifier.2" and model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2)


def test_vit_weights_of_another_image_size_are_interpolated():
    from torchvision.models import get_model

    imagenet_like = get_model("vit_b_16", weights=None).state_dict()  # 224 px: 14 x 14 patches
    model = build_model("vit_b_16", 2, (), 0.0, SIZE)
    load_backbone_weights(model, imagenet_like, "test", "heads")
    assert model.encoder.pos_embedding.shape[1] == 1 + (SIZE // 16) ** 2
    assert torch.equal(model.conv_proj.weight, imagenet_like["conv_proj.weight"])


def _map_side(model: nn.Module, layer: str, x: torch.Tensor) -> int:
    seen = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    return min(seen["a"].shape[-2:])


@pytest.mark.parametrize("arch", [a for a in ARCHS if FAMILY_OF_ARCH[a].finer])
def test_gradcam_maps_are_at_least_7_by_7_at_the_default_image_size(arch):
    """Issue 13: ResNet18's layer4 is 2 x 2 at the default 64 px (quadrant blobs); a finer layer of
    the same network stands in (layer2, 8 x 8), and at 224 px the family's own layer is kept."""
    from cxr.config import load_params
    from tests.conftest import REPO

    size = load_params(REPO / "params.yaml").train.image_size
    torch.manual_seed(0)
    model = build_model(arch, 3, (8,), 0.0, size)
    x = torch.rand(2, 3, size, size)
    layer = gradcam_layer(model, x)
    assert _map_side(model, layer, x) >= 7, layer
    family_layer = gradcam_layer(model)
    if _map_side(model, family_layer, x) < 7:
        assert layer != family_layer
    if arch == "resnet18":
        assert size != 64 or layer == "layer2"
        big = torch.rand(1, 3, 224, 224)
        assert gradcam_layer(model, big) == "layer4" and _map_side(model, "layer4", big) == 7
