"""Grad-CAM (Selvaraju et al., 2017): where in the image the network found evidence for a class.

A short hook-based implementation rather than a dependency: the map is the ReLU of the last
spatial feature map weighted by the spatial mean of the class score's gradient, upsampled to
the input and scaled to [0, 1] per image. The layer comes from the family's entry in
cxr/model/architectures.py (ResNet's `layer4`, VGG's `features`, a ViT's last block's input), or
a finer layer of the same network when that map would be under 7 x 7 at the image size
(ResNet18 at the default 64 px: `layer2`, 8 x 8, instead of `layer4`, 2 x 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr.model.architectures import family_of, resolve

MIN_SIDE = 7  # a coarser map is a few blobs, not a picture of where the evidence is


def _candidates(model: nn.Module, layer: str, finer: str) -> list[str]:
    """Layers that may stand in for `layer`, coarsest (deepest) first."""
    if finer == "children":
        names = [f"{layer}.{name}" for name, _ in model.get_submodule(layer).named_children()]
    elif finer == "siblings":
        parent, _, own = layer.rpartition(".")
        siblings = [name for name, _ in (model.get_submodule(parent) if parent else model).named_children()]
        names = [f"{parent}.{n}" if parent else n for n in siblings[: siblings.index(own) + 1]]
    else:
        names = []
    return [layer, *reversed(names)]


def gradcam_layer(model: nn.Module, sample: torch.Tensor | None = None, min_side: int = MIN_SIDE) -> str:
    """The layer Grad-CAM reads: the family's (cxr/model/architectures.py) or, when its map is under
    `min_side` on a side for inputs like `sample` (one normalised batch), the deepest layer before it
    whose map is not (the family's `finer`); the family's layer when none is."""
    family = family_of(model)
    layer = resolve(model, family.gradcam)
    if sample is None or not family.finer:
        return layer
    names = _candidates(model, layer, family.finer)
    sides: dict[str, int] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: sides.__setitem__(name, min(out.shape[-2:]) if out.dim() == 4 else 0)
        )
        for name in names
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(sample[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return next((name for name in names if sides.get(name, 0) >= min_side), layer)


def _as_map(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as is; a ViT's tokens (N, 1 + H*W, C) without the class token as (N, C, H, W)."""
    if t.dim() == 4:
        return t
    patches = t[:, 1:, :]
    side = math.isqrt(patches.shape[1])
    if t.dim() != 3 or side * side != patches.shape[1]:
        raise ValueError(f"Grad-CAM needs a spatial map or a square grid of tokens, got shape {tuple(t.shape)}")
    return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for class indices `target` (N,) of a normalised batch `x`."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))  # the map has a gradient even with frozen layers
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, captured["a"])
    finally:
        hook.remove()
        model.train(was_training)
    activations = _as_map(captured["a"].detach().float())
    weights = _as_map(grads.float()).mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """An image (uint8 (1 or 3, H, W)) with a Grad-CAM map (H, W) in [0, 1] laid over it in a
    blue-to-red colour scale."""
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    heat = np.clip(cam, 0.0, 1.0)[..., None]
    colours = np.concatenate([heat, 1 - np.abs(2 * heat - 1), 1 - heat], axis=-1) * 255  # red high, blue low
    image = pixels.transpose(1, 2, 0).astype(np.float32)
    blend = (1 - alpha * heat) * image + alpha * heat * colours
    return Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8), mode="RGB")


# A cheap proxy for "did it look at the lungs": the lung fields of a frontal chest film lie
# roughly in the central box; text markers, rulers, borders and collimation edges in the frame.
CENTRAL = (0.15, 0.85)  # fraction of width and height: the central box
FRAME = 0.1  # fraction of the side: the outer frame


def attribution_shares(cams: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean share of Grad-CAM mass (N, H, W) inside the central box and in the outer frame."""
    cams = torch.as_tensor(np.asarray(cams), dtype=torch.float64)
    h, w = cams.shape[-2:]
    total = cams.sum((1, 2)).clamp_min(1e-12)
    lo_h, hi_h, lo_w, hi_w = int(CENTRAL[0] * h), int(CENTRAL[1] * h), int(CENTRAL[0] * w), int(CENTRAL[1] * w)
    central = cams[:, lo_h:hi_h, lo_w:hi_w].sum((1, 2)) / total
    fh, fw = max(1, int(FRAME * h)), max(1, int(FRAME * w))
    inner = cams[:, fh : h - fh, fw : w - fw].sum((1, 2))
    frame = (cams.sum((1, 2)) - inner) / total
    area_central = (hi_h - lo_h) * (hi_w - lo_w) / (h * w)
    area_frame = 1 - (h - 2 * fh) * (w - 2 * fw) / (h * w)
    return {
        "central_share": round(float(central.mean()), 4),
        "frame_share": round(float(frame.mean()), 4),
        "central_area": round(area_central, 4),  # what a map spread evenly would give
        "frame_area": round(area_frame, 4),
        "images": int(cams.shape[0]),
    }
