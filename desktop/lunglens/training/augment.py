"""Batch augmentation on tensors (runs on the training device, no per-image Python loop).

As in the light-SqueezeNet and COVID-ResNet papers: random rotation, shift, scale, shear,
horizontal flip and Gaussian noise, plus a small brightness/contrast jitter because the CT
sources differ mostly in their grey levels (see ../shared/data/README.md, "known traps").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    # Moderate ranges: with the stronger ones first tried (15 deg, 8% shift, 0.9-1.25 scale,
    # +-15% contrast) the model still under-fitted the training folds after 6 CPU epochs.
    rotate_deg: float = 10.0
    shift: float = 0.06  # fraction of the image size
    scale: tuple[float, float] = (0.95, 1.2)  # > 1 zooms in
    shear_deg: float = 5.0
    hflip: float = 0.5
    noise_std: float = 0.02
    brightness: float = 0.05
    contrast: float = 0.1


def augment(
    x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a batch ``[N, 1, H, W]`` in [0, 1]; returns a new tensor in [0, 1]."""
    return augment_with_masks(x, None, cfg, gen)[0]


def augment_with_masks(
    x: torch.Tensor,
    masks: torch.Tensor | None,
    cfg: AugmentConfig,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`augment`, with ``masks`` ``[N, 1, H, W]`` moved by the same geometry.

    The random numbers are drawn exactly as :func:`augment` draws them (the masks draw none),
    so a seeded generator gives the same augmented images with or without masks: lung masks
    can be aligned with views whose features were cached long before.
    """
    n = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, device="cpu").to(dev) * (hi - lo) + lo

    ang = u(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    sh = u(-cfg.shear_deg, cfg.shear_deg) * math.pi / 180
    s = 1.0 / u(*cfg.scale)  # affine_grid maps output->input, so zoom-in = smaller sampling
    flip = torch.where(u(0, 1) < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = s * cos * flip
    theta[:, 0, 1] = s * (-sin + torch.tan(sh) * cos)
    theta[:, 1, 0] = s * sin * flip
    theta[:, 1, 1] = s * (cos + torch.tan(sh) * sin)
    theta[:, 0, 2] = u(-cfg.shift, cfg.shift) * 2
    theta[:, 1, 2] = u(-cfg.shift, cfg.shift) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved = None
    if masks is not None:
        moved = F.grid_sample(
            masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    c = u(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    b = u(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
    mean = out.mean((2, 3), keepdim=True)
    out = (out - mean) * c + mean + b
    sigma = u(0, cfg.noise_std).view(n, 1, 1, 1)
    noise = torch.randn(out.shape, generator=gen, device="cpu").to(dev)
    out = out + noise * sigma
    return out.clamp_(0.0, 1.0), moved
