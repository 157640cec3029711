"""Aligned-face ImageFolder: ``<root>/<identity>/<image>.jpg`` plus an optional landmarks CSV.

The layout is the one of ``lfw112/train`` and of torchvision's ``ImageFolder``. Landmarks
come from a CSV with columns ``identity,file,x1,y1,...,x5,y5`` found beside the folder
(``<root>_landmarks.csv``) or inside it (``landmarks.csv``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class DatasetError(ValueError):
    """A dataset on disk is missing or malformed; the message names the path."""


@dataclass
class FaceSample:
    path: Path
    label: int
    landmarks: np.ndarray | None = None  # (5, 2) in pixels of the stored crop


@dataclass
class AlignedFaceFolder:
    """Index of an aligned-face ImageFolder (identities sorted by name, as torchvision does)."""

    root: Path
    classes: list[str]
    samples: list[FaceSample]
    landmarks_file: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def scan(cls, root: str | Path, landmarks: str | Path | None = None) -> AlignedFaceFolder:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"data folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DatasetError(f"no identity folders in {root} (expected <root>/<identity>/*.jpg)")
        samples: list[FaceSample] = []
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(f"identity folder has no images: {root / name}")
            samples += [FaceSample(p, label) for p in files]
        lm_file = Path(landmarks) if landmarks else find_landmarks_csv(root)
        ds = cls(root=root, classes=classes, samples=samples, landmarks_file=lm_file)
        if lm_file is not None:
            ds._attach_landmarks(lm_file)
        return ds

    def _attach_landmarks(self, path: Path) -> None:
        table = read_landmarks_csv(path)
        for s in self.samples:
            s.landmarks = table.get((s.path.parent.name, s.path.name))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_array(self, size: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Decode every image to ``(N, size, size, 3)`` uint8 RGB plus ``(N,)`` labels.

        Small face sets fit in memory many times over (LFW train at 56 px is 93 MB), and
        augmenting whole batches of tensors is far faster on CPU than per-image PIL work.
        A corrupt or unreadable image is skipped, logged and counted in ``self.skipped``.
        """
        from tqdm import tqdm

        images, labels, kept = [], [], []
        for s in tqdm(self.samples, desc="decode", disable=not progress, unit="img"):
            img = load_rgb(s.path, size)
            if img is None:
                self.skipped.append(str(s.path))
                continue
            images.append(img)
            labels.append(s.label)
            kept.append(s)
        if self.skipped:
            log.warning(
                "skipped %d unreadable images (first: %s)", len(self.skipped), self.skipped[0]
            )
        if not images:
            raise DatasetError(f"no readable images under {self.root}")
        self.samples = kept
        return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_rgb(path: Path, size: int | None = None) -> np.ndarray | None:
    """RGB uint8 array of an image, box-resized to ``size`` (exact 2x2 pooling for 112 -> 56)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BOX)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def find_landmarks_csv(root: Path) -> Path | None:
    for cand in (root.parent / f"{root.name}_landmarks.csv", root / "landmarks.csv"):
        if cand.is_file():
            return cand
    return None


def read_landmarks_csv(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Map ``(identity, file)`` to a (5, 2) float32 array of pixel coordinates."""
    path = Path(path)
    out: dict[tuple[str, str], np.ndarray] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"identity", "file"} | {f"{a}{i}" for i in range(1, 6) for a in "xy"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"landmarks CSV {path} lacks columns: {sorted(missing)}")
        for row in reader:
            pts = [float(row[f"{a}{i}"]) for i in range(1, 6) for a in "xy"]
            out[(row["identity"], row["file"])] = np.asarray(pts, np.float32).reshape(5, 2)
    return out
