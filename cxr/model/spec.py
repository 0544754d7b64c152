"""The model spec: what rebuilds a network, its input pipeline and its decisions, independent of
params.yaml; and the model a run starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.checksums import sha256_of
from cxr.config import PRETRAINED, XRV_PREFIX, Params
from cxr.data.radiograph import InputRecipe
from cxr.model import decisions
from cxr.model.inference import IMAGENET_MEAN, IMAGENET_STD
from cxr.model.networks import add_head, backbone, freeze
from cxr.model.xray_weights import XRV_MEAN, XRV_STD, weights_file, xrv_name
from cxr.paths import PRETRAINED_PATH


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds the network and its input pipeline; saved in every checkpoint."""

    arch: str
    classes: tuple[str, ...]
    task: str  # binary | multiclass | multilabel: the one notion of the task
    loss: str  # ce: softmax outputs; bce/focal: one sigmoid per class
    hidden: tuple[int, ...]
    dropout: float
    activation: str
    keep_classifier: bool
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocessing: str  # how a file becomes the uint8 input (cxr.data.radiograph.InputRecipe.name)

    @property
    def channels(self) -> int:
        """Input channels the network reads: 3 (ImageNet statistics per channel) or 1 (torchxrayvision's)."""
        return len(self.mean)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return decisions.probabilities(logits, self.loss)

    def decide(self, probs, thresholds=None):
        """Decisions for probabilities (cxr.model.decisions.decide) under this task and classes."""
        return decisions.decide(probs, self.classes, self.multilabel, thresholds)

    def build(self, weights: str = "none") -> nn.Module:
        model, replaced = backbone(self.arch, self.image_size, weights, self.keep_classifier, self.channels)
        return add_head(
            model, replaced, len(self.classes), self.hidden, self.dropout, self.image_size, self.activation,
            self.channels,
        )


def spec_from_params(params: Params, classes: tuple[str, ...]) -> ModelSpec:
    """The spec of the model `params` describe, for a dataset with these classes."""
    cfg = params.train
    xray = cfg.weights.startswith(XRV_PREFIX)  # torchxrayvision's input: one channel in [-1024, 1024]
    return ModelSpec(
        arch=cfg.network,
        classes=classes,
        task=params.data.task,
        loss=cfg.loss,
        hidden=tuple(cfg.head.hidden),
        dropout=cfg.head.dropout,
        activation=cfg.head.activation,
        keep_classifier=cfg.head.keep_classifier,
        image_size=cfg.image_size,
        mean=XRV_MEAN if xray else IMAGENET_MEAN,
        std=XRV_STD if xray else IMAGENET_STD,
        preprocessing=InputRecipe.from_params(cfg.input).name,
    )


def starting_point(weights: str) -> dict:
    """What a run starts from, for its log and checkpoint: the weights file and its sha256 (`txrv:` weights or a
    local file); {} for none and imagenet (torch.hub checks ImageNet files against their published hashes)."""
    if weights in ("none", "imagenet"):
        return {}
    if weights == PRETRAINED:
        path = PRETRAINED_PATH
    elif weights.startswith(XRV_PREFIX):
        path = weights_file(xrv_name(weights))
    else:
        path = Path(weights)
    return {"weights": weights, "file": str(path), "sha256": sha256_of(path)}


def initial_model(params: Params, classes: tuple[str, ...]) -> tuple[nn.Module, ModelSpec, int]:
    """The model at epoch 0, frozen per train.freeze: (model, spec, trainable parameter count).

    Initial weights depend on params.seed alone, so the features stage and train build the
    same backbone.
    """
    spec = spec_from_params(params, classes)
    torch.manual_seed(params.seed)
    model = spec.build(weights=params.train.weights)
    return model, spec, freeze(model, params.train.freeze)
