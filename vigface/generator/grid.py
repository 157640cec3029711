"""Sample grids (rows = identities, columns = poses) and the pose columns they use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def yaw_proxy(landmarks: np.ndarray) -> np.ndarray:
    """Signed horizontal nose offset from the eye midpoint, in eye distances (~ sin yaw)."""
    lm = np.asarray(landmarks, np.float32)
    eye_mid = (lm[..., 0, 0] + lm[..., 1, 0]) / 2
    eye_dist = np.maximum(lm[..., 1, 0] - lm[..., 0, 0], 1e-3)
    return (lm[..., 2, 0] - eye_mid) / eye_dist


def pose_columns(landmarks: np.ndarray, count: int) -> np.ndarray:
    """``count`` landmark sets spread over the yaw range (quantiles 5%..95%)."""
    yaw = yaw_proxy(landmarks)
    order = np.argsort(yaw)
    qs = np.linspace(0.05, 0.95, count)
    return np.asarray(landmarks)[order[(qs * (len(order) - 1)).round().astype(int)]]


def save_grid(images: np.ndarray, rows: int, cols: int, path: str | Path, scale: int = 2) -> Path:
    """Tile (rows*cols, S, S, 3) uint8 images row-major into one PNG, upscaled by ``scale``."""
    n, s = images.shape[0], images.shape[1]
    if n != rows * cols:
        raise ValueError(f"{n} images for a {rows}x{cols} grid")
    pad = 2
    canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[
            pad + r * (s + pad) : pad + r * (s + pad) + s,
            pad + c * (s + pad) : pad + c * (s + pad) + s,
        ] = img
    out = Image.fromarray(canvas)
    if scale != 1:
        out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path
