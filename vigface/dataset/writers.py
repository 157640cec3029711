"""Output formats an FR training recipe reads directly.

* ImageFolder: ``<root>/<identity>/<n>.jpg`` (torchvision ``ImageFolder`` layout);
* insightface RecordIO: ``train.rec`` + ``train.idx`` + ``property`` (``num_classes,112,112``)
  as arcface_torch's ``MXFaceDataset`` and its config expect;
* WebDataset: tar shards of ``<key>.jpg`` + ``<key>.cls`` + ``<key>.json``;
* ``manifest.csv``: one row per image with every filter decision; ``dataset_card.json``.

Every file is written to a temporary name and renamed, so a crash never leaves a truncated
file under its final name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.atomic import atomic_path, atomic_write_bytes
from vigface.constants import CROP_SIZE
from vigface.data.recordio import write_face_recordio

FORMATS = ("imagefolder", "recordio", "webdataset")


@dataclass
class ImageRecord:
    """One image of the dataset and how it came to be."""

    identity: str  # folder name, e.g. "v000123"
    label: int  # 0..num_classes-1 in the written dataset
    prototype_id: int  # row of W_V (virtual) or W_R (real)
    prototype_kind: str  # "virtual" | "real"
    index: int  # image index inside the identity
    seed: int
    attempt: int
    landmarks: list[float] = field(default_factory=list)  # 10 numbers, 112-px crop pixels
    pose_bin: str = ""
    yaw: float = 0.0
    cos_own: float = 0.0
    nearest_real_cos: float = 0.0
    nearest_real_id: int = -1
    passed_consistency: bool = True
    passed_leakage: bool = True
    passed_face: bool = True
    accepted: bool = True
    file: str = ""


def encode_jpeg(img: np.ndarray, size: int = CROP_SIZE, quality: int = 95) -> bytes:
    """uint8 RGB image -> JPEG bytes of the ``size`` x ``size`` aligned crop."""
    im = Image.fromarray(img)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_imagefolder(root: Path, items: Iterable[tuple[ImageRecord, bytes]]) -> int:
    n = 0
    for rec, jpg in items:
        atomic_write_bytes(root / rec.identity / f"{rec.index}.jpg", jpg)
        n += 1
    return n


def write_recordio(
    root: Path, items: list[tuple[ImageRecord, bytes]], size: int = CROP_SIZE
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".recordio.tmp"
    tmp.mkdir(exist_ok=True)
    _, num_classes = write_face_recordio(tmp, [(jpg, rec.label) for rec, jpg in items])
    (tmp / "property").write_text(f"{num_classes},{size},{size}")
    for name in ("train.rec", "train.idx", "property"):  # the three renamed one by one
        os.replace(tmp / name, root / name)
    tmp.rmdir()


def write_webdataset(
    root: Path, items: list[tuple[ImageRecord, bytes]], shard_size: int = 1000
) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, start in enumerate(range(0, len(items), shard_size)):
        name = f"shard-{s:06d}.tar"
        with atomic_path(root / name) as tmp, tarfile.open(tmp, "w") as tar:
            for rec, jpg in items[start : start + shard_size]:
                key = f"{rec.identity}_{rec.index:05d}"
                meta = json.dumps(
                    {
                        "identity": rec.identity,
                        "label": rec.label,
                        "prototype_id": rec.prototype_id,
                        "seed": rec.seed,
                    }
                ).encode()
                for ext, data in (("jpg", jpg), ("cls", str(rec.label).encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        shards.append(name)
    return shards


MANIFEST_FIELDS = [f for f in ImageRecord.__dataclass_fields__ if f != "landmarks"] + [
    f"{a}{i}" for i in range(1, 6) for a in "xy"
]


def write_manifest(path: Path, records: Iterable[ImageRecord]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        for rec in records:
            row = asdict(rec)
            lm = row.pop("landmarks")
            row.update(
                {f"{a}{i + 1}": round(lm[2 * i + (a == "y")], 2) for i in range(5) for a in "xy"}
                if lm
                else {}
            )
            w.writerow(row)


def write_json(path: Path, obj: dict) -> None:
    text = json.dumps(finite(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def finite(obj):
    """``obj`` with every NaN or infinite float (numpy's too) as ``None``: strict JSON, the only
    kind PostgreSQL's JSON columns take. Metrics say why a value is undefined themselves."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    return obj


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
