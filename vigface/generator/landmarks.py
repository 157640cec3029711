"""The pose condition: five landmark points rendered as Gaussian heatmaps.

Points are given in the pixel frame of the 112x112 insightface crop (as in the landmarks
CSV); each becomes one channel at the generator's resolution, so the DiT sees pose as an
image aligned with the pixels it generates.
"""

from __future__ import annotations

import torch

from vigface.constants import CROP_SIZE  # the landmark frame (re-exported)


def render_heatmaps(points: torch.Tensor, size: int, sigma_px: float | None = None) -> torch.Tensor:
    """(B, 5, 2) points in 112-px crop coordinates -> (B, 5, size, size) heatmaps in [-1, 1].

    ``sigma_px`` is the Gaussian width at the output resolution (default: size / 32, at least
    one pixel). Values are mapped to [-1, 1] like the image channels they are concatenated with.
    """
    sigma = sigma_px if sigma_px is not None else max(1.0, size / 32)
    pts = points.float() * (size / CROP_SIZE) - 0.5  # pixel centres
    coords = torch.arange(size, device=points.device, dtype=torch.float32)
    dx = (coords[None, None, None, :] - pts[..., 0, None, None]) ** 2
    dy = (coords[None, None, :, None] - pts[..., 1, None, None]) ** 2
    heat = torch.exp(-(dx + dy) / (2 * sigma**2))
    return heat * 2 - 1
