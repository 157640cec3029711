"""Round trips of the insightface formats and the ImageFolder reader's error handling."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, make_face_folder, synthetic_identity_images
from vigface.data import (
    AlignedFaceFolder,
    DatasetError,
    FaceRecordDataset,
    load_bin,
    write_bin,
    write_face_recordio,
)
from vigface.data.recordio import MAGIC, IRHeader, RecordReader, RecordWriter, pack, unpack


def test_recordio_round_trip_matches_mxface_layout(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for label in range(3):
        for img in synthetic_identity_images(rng, label, 2 + label):
            items.append((jpeg_bytes(img), label))
    n_img, n_cls = write_face_recordio(tmp_path, items[::-1])
    assert (n_img, n_cls) == (9, 3)
    ds = FaceRecordDataset(tmp_path)
    # record 0: (first identity record, end of identity records)
    assert ds.header0 == (10, 13)
    assert len(ds) == 9 and ds.num_classes == 3
    got = [ds[i] for i in range(len(ds))]
    expected = sorted(items[::-1], key=lambda it: it[1])
    assert got == expected
    # identity records hold each class's [start, end) image range
    ranges = [unpack(ds.reader.read_idx(10 + c))[0].label.tolist() for c in range(3)]
    assert ranges == [[1.0, 3.0], [3.0, 6.0], [6.0, 10.0]]


def test_recordio_splits_payloads_containing_the_magic_word(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + magic + b"ij"
    with RecordWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
        w.write(0, pack(IRHeader(0, 7.0, 0), payload))
        w.write(1, pack(IRHeader(0, 1.0, 1), b"tail"))
    r = RecordReader(tmp_path / "x.rec")
    h, body = unpack(r.read_idx(0))
    assert body == payload and h.label == 7.0
    assert unpack(r.read_idx(1))[1] == b"tail"
    # the on-disk stream must never contain the magic except as record headers
    raw = (tmp_path / "x.rec").read_bytes()
    heads = [i for i in range(0, len(raw) - 3, 4) if raw[i : i + 4] == magic]
    assert len(heads) == 5  # 4 parts for record 0, 1 for record 1


def test_bin_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = synthetic_identity_images(rng, 0, 4)
    blobs = [jpeg_bytes(i) for i in imgs]
    write_bin(tmp_path / "p.bin", blobs, [True, False])
    images, issame = load_bin(tmp_path / "p.bin")
    assert images.shape == (4, 112, 112, 3) and issame.tolist() == [True, False]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    np.testing.assert_array_equal(images, decoded)
    half, _ = load_bin(tmp_path / "p.bin", size=56)
    assert half.shape == (4, 56, 56, 3)


def test_bin_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_bin(tmp_path / "missing.bin")
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="bad.bin"):
        load_bin(tmp_path / "bad.bin")


def test_imagefolder_reads_landmarks_and_skips_corrupt_images(tmp_path):
    root = make_face_folder(tmp_path / "train", identities=3, per_identity=4)
    (root / "person_001" / "person_001_0099.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    ds = AlignedFaceFolder.scan(root)
    assert ds.classes == ["person_000", "person_001", "person_002"]
    assert ds.landmarks_file == tmp_path / "train_landmarks.csv"
    assert ds.samples[0].landmarks.shape == (5, 2)
    images, labels = ds.load_array(56)
    assert images.shape == (12, 56, 56, 3) and len(ds.skipped) == 1
    assert np.bincount(labels).tolist() == [4, 4, 4]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        AlignedFaceFolder.scan(tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DatasetError, match="no identity folders"):
        AlignedFaceFolder.scan(tmp_path / "empty_root")
    root = make_face_folder(tmp_path / "t", identities=2, per_identity=2)
    (root / "ghost").mkdir()
    with pytest.raises(DatasetError, match="ghost"):
        AlignedFaceFolder.scan(root)
