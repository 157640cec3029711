"""insightface ``.bin`` verification files: a pickle of ``(jpeg_bytes_list, issame_list)``.

Pair ``i`` is images ``2i`` and ``2i+1``; LFW-style files hold 10 folds of consecutive pairs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.constants import CROP_SIZE
from vigface.data.imagefolder import DatasetError


def load_bin(path: str | Path, size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (2P, size, size, 3) uint8 RGB, issame (P,) bool)``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"verification file not found: {path}")
    try:
        with path.open("rb") as f:
            bins, issame = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path} is not an insightface .bin file: {exc}") from exc
    if len(bins) != 2 * len(issame):
        raise DatasetError(f"{path}: {len(bins)} images for {len(issame)} pairs (need 2 per pair)")
    images = np.empty((len(bins), size, size, 3), np.uint8)
    for i, b in enumerate(bins):
        with Image.open(io.BytesIO(bytes(b))) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BOX)
            images[i] = np.asarray(im)
    return images, np.asarray(issame, dtype=bool)


def write_bin(path: str | Path, jpeg_bytes: list[bytes], issame: list[bool]) -> None:
    """Write a verification file in the same format (used by tests and dataset tooling)."""
    if len(jpeg_bytes) != 2 * len(issame):
        raise ValueError("need exactly two images per pair")
    with Path(path).open("wb") as f:
        pickle.dump((list(jpeg_bytes), list(issame)), f, protocol=pickle.HIGHEST_PROTOCOL)
