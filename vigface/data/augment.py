"""Batched face augmentation on tensors (one call per batch, on the training device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GRAY = torch.tensor([0.299, 0.587, 0.114])


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float in [-1, 1], insightface's normalisation."""
    return images_uint8.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)


def augment_batch(x: torch.Tensor, cfg, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip, small shift/zoom and colour jitter of a (B, 3, H, W) batch in [-1, 1].

    ``cfg`` is an :class:`vigface.config.AugmentConfig`. Geometry stays mild because the
    crops are aligned: large shifts would move the eyes off the template the model relies on.
    """
    b, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=generator)

    if cfg.flip:
        flip = rand(b) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.shift or cfg.scale_jitter:
        zoom = 1 + (rand(b) * 2 - 1) * cfg.scale_jitter
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
        theta[:, 0, 2] = (rand(b) * 2 - 1) * cfg.shift * 2 / w
        theta[:, 1, 2] = (rand(b) * 2 - 1) * cfg.shift * 2 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gray = (x * _GRAY.to(dev)[None, :, None, None]).sum(1, keepdim=True)
    if cfg.saturation:
        s = 1 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.saturation
        x = gray + (x - gray) * s
    if cfg.grayscale_p:
        to_gray = rand(b, 1, 1, 1) < cfg.grayscale_p
        x = torch.where(to_gray, gray.expand_as(x), x)
    if cfg.contrast:
        c = 1 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    if cfg.brightness:
        x = x + (rand(b, 1, 1, 1) * 2 - 1) * cfg.brightness
    return x.clamp_(-1, 1)
