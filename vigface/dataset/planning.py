"""What a dataset will contain before any image is drawn: slots, prototypes, poses.

A *slot* is one class of the dataset. ``candidates`` are prototype rows in the order they may
be used: the first ``identities`` fill the slots, the rest (the spares) replace identities the
filters drop, so the dataset keeps its requested size. Each slot's images get landmarks drawn
from the generator's pose bank for the requested pose distribution (largest-remainder
allocation, seeded by the order), so the plan is a pure function of the order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigface.pose import PoseBank


class NotEnoughPrototypes(ValueError):
    """The model (or the allocation) has fewer free prototypes than the order needs."""


@dataclass
class SlotPlan:
    candidates: list[int]  # prototype rows, slots first, then spares in order of use
    slot_images: list[int]  # images per slot
    offsets: np.ndarray  # first image of each slot in the flat image list (len slots + 1)
    pose_idx: np.ndarray  # row of the pose bank for every image of the dataset
    pose_weights: np.ndarray  # the requested yaw-bin distribution

    def pose_row(self, slot: int, index: int) -> int:
        return int(self.pose_idx[self.offsets[slot] + index])

    @property
    def images(self) -> int:
        return int(self.offsets[-1])


def plan_slots(
    bank: PoseBank,
    pose,
    seed: int,
    identities: int,
    images_per_identity: int,
    total_prototypes: int,
    kind: str,
    candidates: list[int] | None = None,
    slot_images: list[int] | None = None,
) -> SlotPlan:
    """Validate the prototype queue and draw every image's pose."""
    cands = list(range(total_prototypes)) if candidates is None else list(candidates)
    if len(cands) < identities:
        raise NotEnoughPrototypes(
            f"identities: asked for {identities}, but only {len(cands)} free "
            f"{kind} prototypes are available"
        )
    if any(c < 0 or c >= total_prototypes for c in cands):
        raise NotEnoughPrototypes(f"candidate prototypes must be rows 0..{total_prototypes - 1}")
    per_slot = list(slot_images) if slot_images else [images_per_identity] * identities
    if len(per_slot) != identities or min(per_slot) < 1:
        raise ValueError("slot_images needs one positive count per identity")
    offsets = np.concatenate([[0], np.cumsum(per_slot)])
    pose_idx, pose_weights = bank.draw(pose, int(offsets[-1]), seed)
    return SlotPlan(cands, per_slot, offsets, pose_idx, pose_weights)


def real_augment_plan(class_names: list[str], real_data: str | Path, target: int):
    """Real-identity augmentation (the paper's +0.92 case): every real training class with
    fewer than ``target`` images gets ``target - count`` generated images from its own
    prototype. ``class_names`` are the FR model's classes (rows of W_R). Returns
    ``(prototype rows, images per row)``."""
    from vigface.data import AlignedFaceFolder

    ds = AlignedFaceFolder.scan(real_data)
    counts = Counter(s.label for s in ds.samples)
    row_of = {name: i for i, name in enumerate(class_names)}
    rows, gaps = [], []
    for label, name in enumerate(ds.classes):
        if name in row_of and counts[label] < target:
            rows.append(row_of[name])
            gaps.append(target - counts[label])
    return rows, gaps
