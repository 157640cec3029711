"""Atomic checkpoint writes shared by both training stages."""

from __future__ import annotations

from pathlib import Path

import torch

from vigface.atomic import atomic_path


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary name and rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
