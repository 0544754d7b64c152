"""Training-time augmentation on batches of tensors, on the training device.

Images come from the uint8 store already resized, so augmentation cannot be a PIL transform
per file: one affine warp (flip, rotation, crop-and-zoom) per image is applied to the whole
batch with `grid_sample`, then brightness and contrast. Random draws come from the seeded
batch-order generator, so a run (and a resumed run) is reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr.config import AugmentConfig


def is_active(cfg: AugmentConfig) -> bool:
    return cfg.hflip > 0 or cfg.rotate > 0 or cfg.crop < 1 or cfg.brightness > 0 or cfg.contrast > 0


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
    return x.clamp(0.0, 1.0)
