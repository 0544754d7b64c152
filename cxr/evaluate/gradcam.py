"""Grad-CAM (Selvaraju et al., 2017): where in the image the network found evidence for a class.

A short hook-based implementation rather than a dependency: the map is the ReLU of the last
spatial feature map weighted by the spatial mean of the class score's gradient, upsampled to
the input and scaled to [0, 1] per image. The layer is found by a forward pass: the last module
whose output is still a spatial map (ResNet's `layer4`, VGG's and DenseNet's `features`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@torch.no_grad()
def last_spatial_layer(model: nn.Module, image_size: int) -> str:
    """Name of the last module (in execution order) whose output is (N, C, H, W) with H, W > 1."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: finished.append((name, tuple(out.shape))))
        for name, module in model.named_modules()
        if name and not isinstance(module, POOLING)
    ]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    spatial = [name for name, shape in finished if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
    if not spatial:
        raise ValueError(f"{type(model).__name__}: no layer keeps a spatial map at {image_size} px")
    return spatial[-1]


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] for class indices `target` (N,) of a normalised batch `x`."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, captured["a"])
    finally:
        hook.remove()
        model.train(was_training)
    activations = captured["a"].detach().float()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """An RGB image (uint8 (3, H, W)) with a Grad-CAM map (H, W) in [0, 1] laid over it in
    a blue-to-red colour scale."""
    heat = np.clip(cam, 0.0, 1.0)[..., None]
    colours = np.concatenate([heat, 1 - np.abs(2 * heat - 1), 1 - heat], axis=-1) * 255  # red high, blue low
    image = pixels.transpose(1, 2, 0).astype(np.float32)
    blend = (1 - alpha * heat) * image + alpha * heat * colours
    return Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8), mode="RGB")
