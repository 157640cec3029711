"""Every output format read back by a reader that shares no code with the writers."""

import csv
import io
import struct

import numpy as np
from PIL import Image

from conftest import synthetic_identity_images
from vigface.dataset.writers import (
    ImageRecord,
    encode_jpeg,
    write_imagefolder,
    write_manifest,
    write_recordio,
    write_webdataset,
)


def _items(identities=20, per=3):
    rng = np.random.default_rng(0)
    items = []
    for k in range(identities):
        for j, img in enumerate(synthetic_identity_images(rng, k, per, size=32)):
            rec = ImageRecord(
                identity=f"v{k:06d}",
                label=k,
                prototype_id=100 + k,
                prototype_kind="virtual",
                index=j,
                seed=1000 * k + j,
                attempt=0,
                landmarks=list(np.arange(10, dtype=float)),
            )
            items.append((rec, encode_jpeg(img)))
    return items


def _mxface_read(root):
    """Minimal re-implementation of arcface_torch MXFaceDataset + mxnet.recordio.unpack."""
    offsets = {}
    for line in (root / "train.idx").read_text().splitlines():
        k, off = line.split("\t")
        offsets[int(k)] = int(off)
    data = (root / "train.rec").read_bytes()

    def read(key):
        pos, parts = offsets[key], []
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == 0xCED7230A
            flag, length = lrec >> 29, lrec & (2**29 - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if flag in (0, 3):
                return struct.pack("<I", 0xCED7230A).join(parts)

    def unpack(s):
        flag, label, _, _ = struct.unpack("<IfQQ", s[:24])
        s = s[24:]
        if flag > 0:
            label = np.frombuffer(s[: 4 * flag], np.float32)
            s = s[4 * flag :]
        return label, s

    label0, _ = unpack(read(0))
    out = []
    for idx in range(1, int(label0[0])):
        label, img = unpack(read(idx))
        out.append((int(label if np.isscalar(label) else label[0]), img))
    return out, (int(label0[0]), int(label0[1]))


def test_recordio_reads_back_exactly(tmp_path):
    items = _items()
    write_recordio(tmp_path, items)
    got, header0 = _mxface_read(tmp_path)
    assert header0 == (61, 81)  # 60 images, 20 identity records
    assert got == [(rec.label, jpg) for rec, jpg in items]
    assert (tmp_path / "property").read_text() == "20,112,112"


def test_imagefolder_layout(tmp_path):
    items = _items(identities=3, per=2)
    write_imagefolder(tmp_path, items)
    # torchvision.datasets.ImageFolder's rules: sorted class folders, files with image suffixes
    classes = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert classes == ["v000000", "v000001", "v000002"]
    files = sorted(tmp_path.glob("*/*.jpg"))
    assert len(files) == 6 and not list(tmp_path.rglob("*.tmp"))
    im = Image.open(files[0])
    assert im.size == (112, 112) and im.mode == "RGB"


def test_webdataset_shards_load_with_webdataset(tmp_path):
    import webdataset as wds

    items = _items(identities=5, per=3)
    shards = write_webdataset(tmp_path, items, shard_size=4)
    assert len(shards) == 4
    urls = [str(tmp_path / s) for s in shards]
    samples = list(
        wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json")
    )
    assert len(samples) == 15
    img, cls, meta = samples[5]
    assert img.size == (112, 112) and cls == items[5][0].label and meta["seed"] == items[5][0].seed


def test_manifest_rows(tmp_path):
    items = _items(identities=2, per=2)
    write_manifest(tmp_path / "manifest.csv", [rec for rec, _ in items])
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert len(rows) == 4 and rows[1]["identity"] == "v000000" and rows[1]["y5"] == "9.0"
    assert set(rows[0]) >= {"prototype_id", "seed", "cos_own", "nearest_real_cos", "accepted"}


def test_encode_jpeg_upsamples_to_the_crop():
    img = np.zeros((32, 32, 3), np.uint8)
    im = Image.open(io.BytesIO(encode_jpeg(img)))
    assert im.size == (112, 112)
