"""insightface RecordIO (``train.rec`` + ``train.idx``) in pure Python, no mxnet.

Format (dmlc-core ``recordio`` + mxnet ``recordio.pack``):

* every record is ``uint32 magic 0xced7230a``, ``uint32 lrec`` (upper 3 bits: continuation
  flag, lower 29: length), the payload, zero padding to a multiple of 4 bytes. A payload
  holding the magic word at a 4-byte-aligned offset is split there into parts (flag 1 = first,
  2 = middle, 3 = last) and the reader puts the magic back between parts;
* the payload is an ``IRHeader`` (``<IfQQ``: flag, label, id, id2) followed, when ``flag > 0``,
  by ``flag`` float32 labels, then the encoded image;
* ``train.idx`` lines are ``key<TAB>byte offset``.

The face datasets arcface_torch reads (``MXFaceDataset``) keep in record 0 a header whose
label is ``(first identity record, end of identity records)``; records ``1..N`` are images
labelled with their class; records ``N+1..`` hold each identity's ``[start, end)`` image range.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigface.data.imagefolder import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


@dataclass
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int = 0


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Serialise a header and payload exactly as ``mxnet.recordio.pack`` does."""
    label = header.label
    if isinstance(label, (int, float, np.floating, np.integer)):
        return struct.pack(_IR_FORMAT, 0, float(label), header.id, header.id2) + payload
    arr = np.asarray(label, dtype=np.float32)
    return struct.pack(_IR_FORMAT, arr.size, 0.0, header.id, header.id2) + arr.tobytes() + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    if len(record) < _IR_SIZE:
        raise DatasetError(f"record of {len(record)} bytes is shorter than its header")
    flag, label, id_, id2 = struct.unpack(_IR_FORMAT, record[:_IR_SIZE])
    body = record[_IR_SIZE:]
    if flag > 0:
        labels = np.frombuffer(body[: 4 * flag], dtype=np.float32).copy()
        return IRHeader(flag, labels, id_, id2), body[4 * flag :]
    return IRHeader(flag, label, id_, id2), body


class RecordWriter:
    """Appends records to ``.rec`` and their offsets to ``.idx`` (mxnet ``MXIndexedRecordIO``)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        self._rec = open(rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(idx_path, "w")  # noqa: SIM115

    def write(self, key: int, record: bytes) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        parts = _split_on_magic(record)
        for i, part in enumerate(parts):
            if len(parts) == 1:
                cflag = 0
            else:
                cflag = 1 if i == 0 else (3 if i == len(parts) - 1 else 2)
            if len(part) >= 1 << 29:
                raise ValueError("record part longer than 2**29 bytes")
            self._rec.write(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(part)))
            self._rec.write(part + b"\x00" * (-len(part) % 4))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split_on_magic(data: bytes) -> list[bytes]:
    parts, start = [], 0
    for pos in range(0, len(data) - len(data) % 4, 4):
        if data[pos : pos + 4] == _MAGIC_BYTES:
            parts.append(data[start:pos])
            start = pos + 4
    parts.append(data[start:])
    return parts


def read_record_at(f, offset: int, path: Path | str, key: int) -> bytes:
    """The payload of the record starting at byte ``offset`` of the open ``.rec`` file ``f``
    (its parts joined, the magic put back between them)."""
    f.seek(offset)
    chunks = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise DatasetError(f"{path}: truncated record {key}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DatasetError(f"{path}: bad magic at record {key}")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        chunks.append(f.read(length))
        f.read(-length % 4)
        if cflag in (0, 3):
            break
    return _MAGIC_BYTES.join(chunks)


class RecordReader:
    """Random access to an indexed RecordIO file."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        rec_path = Path(rec_path)
        idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
        for p in (rec_path, idx_path):
            if not p.is_file():
                raise DatasetError(f"RecordIO file not found: {p}")
        self.offsets: dict[int, int] = {}
        with idx_path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    key, off = line.split("\t")
                    self.offsets[int(key)] = int(off)
                except ValueError as exc:
                    raise DatasetError(f"{idx_path}:{n}: malformed index line {line!r}") from exc
        self._f = rec_path.open("rb")
        self.path = rec_path

    @property
    def keys(self) -> list[int]:
        return list(self.offsets)

    def read_idx(self, key: int) -> bytes:
        return read_record_at(self._f, self.offsets[key], self.path, key)

    def close(self) -> None:
        self._f.close()


class FaceRecordDataset:
    """Reads a face RecordIO the way arcface_torch's ``MXFaceDataset`` does."""

    def __init__(self, root: str | Path, name: str = "train"):
        root = Path(root)
        self.reader = RecordReader(root / f"{name}.rec", root / f"{name}.idx")
        header, _ = unpack(self.reader.read_idx(0))
        if header.flag > 0:
            self.header0 = (int(header.label[0]), int(header.label[1]))
            self.imgidx = list(range(1, int(header.label[0])))
        else:
            self.header0 = None
            self.imgidx = self.reader.keys

    def __len__(self) -> int:
        return len(self.imgidx)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        """Encoded image bytes and integer label of the ``index``-th image."""
        header, img = unpack(self.reader.read_idx(self.imgidx[index]))
        label = header.label
        if not isinstance(label, (int, float)):
            label = label[0]
        return img, int(label)

    @property
    def num_classes(self) -> int:
        if self.header0 is None:
            return len({self[i][1] for i in range(len(self))})
        return self.header0[1] - self.header0[0]


def write_face_recordio(
    root: str | Path, items: list[tuple[bytes, int]], name: str = "train"
) -> tuple[int, int]:
    """Write ``(encoded image, label)`` pairs, grouped by label, as an MXFaceDataset folder.

    Labels must be ``0..C-1``. Returns ``(num_images, num_classes)``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = sorted(items, key=lambda it: it[1])  # stable: keeps per-class order
    num_images = len(items)
    labels = [lab for _, lab in items]
    num_classes = (max(labels) + 1) if labels else 0
    if sorted(set(labels)) != list(range(num_classes)):
        raise ValueError("labels must cover 0..C-1 without gaps")
    first_id = num_images + 1
    with RecordWriter(root / f"{name}.rec", root / f"{name}.idx") as w:
        w.write(0, pack(IRHeader(2, np.array([first_id, first_id + num_classes]), 0), b""))
        ranges: dict[int, list[int]] = {}
        for key, (img, lab) in enumerate(items, 1):
            w.write(key, pack(IRHeader(0, float(lab), key), img))
            ranges.setdefault(lab, [key, key + 1])[1] = key + 1
        for c in range(num_classes):
            start, end = ranges[c]
            w.write(first_id + c, pack(IRHeader(2, np.array([start, end]), first_id + c), b""))
    return num_images, num_classes
