"""Face datasets read from disk as training goes, for sets that do not fit in memory.

Stage 1 on LFW holds every image in one array (:mod:`vigface.data.imagefolder`); on
CASIA-WebFace (0.5M images) or WebFace4M it cannot. These readers keep only a compact index
in memory and decode each image when a loader process asks for it:

* :class:`RecordIOFaces`: insightface RecordIO (``train.rec`` + ``train.idx``), map-style as
  arcface_torch's ``MXFaceDataset``; the index becomes two int64 arrays (16 bytes an image,
  not a Python object each), and every loader process opens its own file handle on first use
  (handles are not shared across ``fork``);
* :class:`WebDatasetFaces`: tar shards of ``<key>.jpg|png`` + ``<key>.cls``; each (rank,
  loader process) pair streams its own shards in an epoch-seeded order through a seeded
  shuffle buffer.

Both yield ``(image (S, S, 3) uint8, label)``; decoding uses PIL's JPEG draft mode, which
decodes straight at a reduced scale when the model's input is smaller than the stored face.
:func:`face_loader` wraps either in a ``DataLoader`` with several worker processes.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vigface.data.imagefolder import DatasetError
from vigface.data.recordio import read_record_at, unpack


def decode_face(data: bytes, size: int) -> np.ndarray:
    """Encoded image -> (size, size, 3) uint8 RGB."""
    try:
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # DCT-domain downscale: decode less
        im = im.convert("RGB")
    except Exception as exc:  # PIL raises many kinds
        raise DatasetError(f"undecodable image ({len(data)} bytes): {exc}") from exc
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``key<TAB>offset`` lines -> (keys, offsets) int64 arrays, parsed in C."""
    text = idx_path.read_bytes().replace(b"\t", b" ")
    values = np.array(text.split(), dtype=np.int64)
    if values.size % 2:
        raise DatasetError(f"{idx_path}: malformed index (odd number of fields)")
    pairs = values.reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


class RecordIOFaces(torch.utils.data.Dataset):
    """The images of an insightface face RecordIO folder (``<root>/train.rec|idx``).

    Record 0's header gives ``[first identity record, end)``; images are records
    ``1 .. first - 1`` and the class count is ``end - first`` (``MXFaceDataset``'s layout,
    written by :func:`vigface.data.recordio.write_face_recordio`). A RecordIO without that
    header is read as images ``0..N-1`` with labels read from each record."""

    def __init__(self, root: str | Path, size: int, name: str = "train"):
        root = Path(root)
        self.rec_path, idx_path = root / f"{name}.rec", root / f"{name}.idx"
        for p in (self.rec_path, idx_path):
            if not p.is_file():
                raise DatasetError(f"RecordIO file not found: {p}")
        keys, offsets = read_index(idx_path)
        self.size = size
        self._offset_of = np.full(int(keys.max()) + 1 if len(keys) else 0, -1, np.int64)
        self._offset_of[keys] = offsets
        self._file = None
        self._pid = None
        header, _ = unpack(self._read(int(keys.min()) if len(keys) else 0))
        if header.flag > 0:
            first, end = int(header.label[0]), int(header.label[1])
            self.first_key, self.count, self.num_classes = 1, first - 1, end - first
        else:
            self.first_key, self.count = int(keys.min()), len(keys)
            self.num_classes = None  # unknown without reading every record

    def _read(self, key: int) -> bytes:
        if self._file is None or self._pid != os.getpid():  # one handle per process
            self._file, self._pid = self.rec_path.open("rb"), os.getpid()
        if not 0 <= key < len(self._offset_of) or self._offset_of[key] < 0:
            raise DatasetError(f"{self.rec_path}: no record {key} in the index")
        return read_record_at(self._file, int(self._offset_of[key]), self.rec_path, key)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        header, data = unpack(self._read(self.first_key + int(index)))
        label = header.label if np.isscalar(header.label) else header.label[0]
        return torch.from_numpy(decode_face(data, self.size)), int(label)

    def __getstate__(self):  # loader workers reopen the file themselves
        state = dict(self.__dict__)
        state["_file"] = state["_pid"] = None
        return state


IMAGE_EXTS = ("jpg", "jpeg", "png")


def _tar_samples(path: Path) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) of a WebDataset shard, in stored order."""
    pending: dict[str, dict] = {}
    with tarfile.open(path, "r|*") as tar:  # streaming: no member list kept
        for member in tar:
            if not member.isfile() or "." not in member.name:
                continue
            key, ext = member.name.split(".", 1)
            if ext not in (*IMAGE_EXTS, "cls"):
                continue
            data = tar.extractfile(member).read()
            got = pending.setdefault(key, {})
            got["img" if ext in IMAGE_EXTS else "cls"] = data
            if len(got) == 2:
                del pending[key]
                try:
                    label = int(got["cls"].decode().strip())
                except ValueError as exc:
                    raise DatasetError(f"{path}: {key}.cls is not an integer") from exc
                yield key, got["img"], label


def count_webdataset(shards: list[Path]) -> tuple[int, int]:
    """(samples, classes) of a set of shards, reading only headers and ``.cls`` members."""
    samples, top = 0, -1
    for shard in shards:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".cls"):
                    samples += 1
                    top = max(top, int(tar.extractfile(member).read().decode().strip()))
    return samples, top + 1


class WebDatasetFaces(torch.utils.data.IterableDataset):
    """Faces streamed from ``<root>/*.tar``; call :meth:`set_epoch` before each epoch.

    Shards are split over ``rank x loader process``: with more readers than shards some
    readers get none, so write at least ``world_size x num_workers`` shards."""

    def __init__(self, root: str | Path, size: int, seed: int = 0, shuffle_buffer: int = 2000):
        self.shards = sorted(Path(root).glob("*.tar"))
        if not self.shards:
            raise DatasetError(f"no WebDataset shards (*.tar) in {root}")
        self.size, self.seed, self.buffer = size, seed, shuffle_buffer
        self.count, self.num_classes = count_webdataset(self.shards)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def _my_shards(self) -> list[Path]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        order = list(self.shards)
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order[rank * workers + worker :: world * workers]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, info.id if info else 0)))
        buffer: list[tuple[bytes, int]] = []
        for shard in self._my_shards():
            for _key, data, label in _tar_samples(shard):
                buffer.append((data, label))
                if len(buffer) >= self.buffer:
                    data, label = buffer.pop(rng.randrange(len(buffer)))
                    yield torch.from_numpy(decode_face(data, self.size)), label
        rng.shuffle(buffer)
        for data, label in buffer:
            yield torch.from_numpy(decode_face(data, self.size)), label


def open_face_stream(root: str | Path, size: int, seed: int = 0):
    """The streaming reader a folder holds: RecordIO (``train.rec``) or WebDataset
    (``*.tar``); None when it holds neither (an ImageFolder, read into memory instead)."""
    root = Path(root)
    if (root / "train.rec").is_file():
        return RecordIOFaces(root, size)
    if any(root.glob("*.tar")):
        return WebDatasetFaces(root, size, seed=seed)
    return None


def face_loader(
    dataset,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """Batches of ``(images (B, S, S, 3) uint8, labels (B,))`` for one epoch; incomplete last
    batches are dropped. Map-style sets are permuted by ``seed + epoch`` and split by rank
    the way the in-memory loop splits its permutation."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        dataset.set_epoch(epoch)
        sampler = None
    else:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
