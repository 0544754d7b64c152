"""Training-time augmentation on batches of tensors, on the training device.

Images come from the uint8 store already resized, so augmentation cannot be a PIL transform
per file: one affine warp (flip, rotation, crop-and-zoom) per image is applied to the whole
batch with `grid_sample`, then brightness and contrast, then what another hospital's
acquisition does to a film: a detector's response curve (gamma), a softer or edge-enhanced system
(Gaussian blur, unsharp masking), a lower dose (noise) and a coarser detector (down- then
up-sampling). Random draws come from the seeded batch-order generator, and a step that is off
draws nothing, so a run (and a resumed run) is reproducible and the old keys' runs are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr.config import AugmentConfig


def is_active(cfg: AugmentConfig) -> bool:
    geometric = cfg.hflip > 0 or cfg.rotate > 0 or cfg.crop < 1
    return geometric or cfg.brightness > 0 or cfg.contrast > 0 or acquisition_active(cfg)


def acquisition_active(cfg: AugmentConfig) -> bool:
    return cfg.gamma > 0 or cfg.blur > 0 or cfg.sharpen > 0 or cfg.noise > 0 or cfg.resolution < 1


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly flip, rotate, crop and re-light each image of a float batch in [0, 1] (B, C, H, W)."""
    n = x.shape[0]
    if cfg.hflip > 0 or cfg.rotate > 0 or cfg.crop < 1:
        flip = torch.where(torch.rand(n, generator=generator) < cfg.hflip, -1.0, 1.0)
        angle = _uniform(n, -cfg.rotate, cfg.rotate, generator) * (math.pi / 180)
        # a crop keeping `area` of the image, zoomed back to full size, at a random position
        scale = _uniform(n, cfg.crop, 1.0, generator).sqrt()
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
        cos, sin = angle.cos() * scale, angle.sin() * scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.brightness > 0:
        x = x * _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator).to(x.device, x.dtype).view(n, 1, 1, 1)
    if cfg.contrast > 0:
        factor = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator).to(x.device, x.dtype).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    x = x.clamp(0.0, 1.0)
    return acquire(x, cfg, generator) if acquisition_active(cfg) else x


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, 1, 1, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, reach: float) -> torch.Tensor:
    """Each image blurred with its own Gaussian of `sigma` pixels (0 = unchanged), separable, one
    grouped convolution per axis; kernels span 3 x `reach` pixels either side, reflected at the edges."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * reach))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sig = _per_image(sigma, x).view(b, 1).clamp_min(1e-3)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sig) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b * c, taps)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


def acquire(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Another acquisition of each image of a [0, 1] batch: gamma, blur, sharpening, noise and
    resolution, each drawn per image up to its `train.augment` bound."""
    n, side = x.shape[0], x.shape[-1]
    if cfg.gamma > 0:
        x = x.clamp_min(1e-6) ** _per_image(_uniform(n, 1 - cfg.gamma, 1 + cfg.gamma, generator), x)
    if cfg.blur > 0:
        x = gaussian_blur(x, _uniform(n, 0.0, cfg.blur, generator), cfg.blur)
    if cfg.sharpen > 0:  # unsharp masking: the image plus `amount` times its detail above a 1-pixel blur
        amount = _per_image(_uniform(n, 0.0, cfg.sharpen, generator), x)
        x = x + amount * (x - gaussian_blur(x, torch.ones(n), 1.0))
    if cfg.noise > 0:
        std = _per_image(_uniform(n, 0.0, cfg.noise, generator), x)
        x = x + std * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    if cfg.resolution < 1:
        sides = (_uniform(n, cfg.resolution, 1.0, generator) * side).round().clamp_min(8).int().tolist()
        x = torch.cat([
            F.interpolate(F.interpolate(img[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False),
                          size=(side, side), mode="bilinear", align_corners=False) if s < side else img[None]
            for img, s in zip(x, sides, strict=True)
        ])  # fmt: skip
    return x.clamp(0.0, 1.0)
