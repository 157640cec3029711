"""Stage 1 on sets that do not fit in memory (issue 31): RecordIO and WebDataset streamed by
loader processes, the same faces as the in-memory path, and training from either, on one
process and on two gloo ranks with the prototype rows split between them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes, synthetic_identity_images
from vigface.config import load_config
from vigface.data import DatasetError, write_face_recordio
from vigface.data.streaming import (
    RecordIOFaces,
    WebDatasetFaces,
    decode_face,
    face_loader,
    open_face_stream,
    read_index,
)
from vigface.fr_model import FRModel
from vigface.training.fr import train_fr


def _items(identities=6, per=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (jpeg_bytes(img), i)
        for i in range(identities)
        for img in synthetic_identity_images(rng, i, per)
    ]


def _recordio(root, identities=6, per=8):
    write_face_recordio(root, _items(identities, per))
    return root


def _webdataset(root, identities=6, per=8, shard_size=10):
    root.mkdir(parents=True)
    items = _items(identities, per)
    for s, start in enumerate(range(0, len(items), shard_size)):
        with tarfile.open(root / f"shard-{s:04d}.tar", "w") as tar:
            for j, (jpg, label) in enumerate(items[start : start + shard_size]):
                for ext, data in (("jpg", jpg), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{start + j:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_the_recordio_reader_keeps_an_index_not_the_images(tmp_path):
    root = _recordio(tmp_path / "rec")
    ds = RecordIOFaces(root, size=28)
    assert (len(ds), ds.num_classes) == (48, 6)
    img, label = ds[9]
    assert img.shape == (28, 28, 3) and img.dtype == torch.uint8 and label == 1
    keys, offsets = read_index(root / "train.idx")
    assert keys.dtype == np.int64 and len(keys) == 48 + 1 + 6
    # labels are grouped as written; every image is there once
    assert sorted(ds[i][1] for i in range(len(ds))) == sorted(lab for _, lab in _items())
    # the same pixels as decoding the stored JPEG directly
    jpg = _items()[9][0]
    assert np.array_equal(img.numpy(), decode_face(jpg, 28))


def test_loader_processes_give_every_image_once_per_epoch_in_a_seeded_order(tmp_path):
    ds = RecordIOFaces(_recordio(tmp_path / "rec"), size=28)

    def labels(epoch, workers, rank=0, world=1):
        loader = face_loader(ds, 8, workers, seed=3, epoch=epoch, rank=rank, world_size=world)
        return torch.cat([y for _, y in loader]).tolist()

    a, b = labels(0, 2), labels(0, 0)
    assert a == b  # worker processes change nothing but speed
    assert sorted(a) == sorted(lab for _, lab in _items())
    assert labels(1, 2) != a  # a new epoch, a new order
    halves = labels(0, 2, 0, 2) + labels(0, 2, 1, 2)
    assert sorted(halves) == sorted(a)  # two ranks split the epoch between them


def test_webdataset_shards_stream_every_sample_once_across_workers_and_ranks(tmp_path):
    ds = WebDatasetFaces(_webdataset(tmp_path / "wds"), size=28, shuffle_buffer=7)
    assert (len(ds), ds.num_classes) == (48, 6)
    want = sorted(lab for _, lab in _items())
    got = torch.cat([y for _, y in face_loader(ds, 1, workers=2, seed=0, epoch=0)]).tolist()
    assert sorted(got) == want
    assert got != [lab for _, lab in _items()]  # a shuffle, not the stored order
    # in batches each loader process drops its own incomplete last one, nothing more
    got = torch.cat([y for _, y in face_loader(ds, 4, workers=2, seed=0, epoch=0)]).tolist()
    left = list(want)
    for lab in got:
        left.remove(lab)  # raises if a sample came twice
    assert len(left) <= 2 * 3


def test_broken_inputs_are_named(tmp_path):
    root = _recordio(tmp_path / "rec")
    (root / "train.idx").write_text("1\t0\n2\n")
    with pytest.raises(DatasetError, match="malformed index"):
        RecordIOFaces(root, 28)
    (tmp_path / "empty").mkdir()
    assert open_face_stream(tmp_path / "empty", 28) is None
    with pytest.raises(DatasetError, match="no WebDataset shards"):
        WebDatasetFaces(tmp_path / "empty", 28)
    with pytest.raises(DatasetError, match="undecodable image"):
        decode_face(b"not an image", 28)


@pytest.mark.parametrize("kind", ["recordio", "webdataset"])
def test_stage_one_trains_from_a_stream(kind, tmp_path, tiny_config):
    data = (_recordio if kind == "recordio" else _webdataset)(tmp_path / kind)
    cfg = load_config(tiny_config, overrides={"data.loader_workers": 2})
    model = train_fr(cfg, data, tmp_path / "out", progress=False)
    assert model.real_prototypes.shape == (6, 32) and model.card["num_images"] == 48
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "img_per_s" in r] == [1, 2]
    FRModel.load(tmp_path / "out")
    # the classes are the stream's labels, and resuming the finished run changes nothing
    assert model.classes == [str(i) for i in range(6)]
    again = train_fr(cfg, data, tmp_path / "out", progress=False)
    assert torch.equal(again.real_prototypes, model.real_prototypes)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_with_prototype_rows_split(tmp_path, tiny_config):
    data = _recordio(tmp_path / "rec", identities=7)
    cfg = tiny_config.read_text().replace("num_virtual: 4", "num_virtual: 5")
    cfg += "data: {loader_workers: 1}\n"
    cfg = cfg.replace("head:\n", "head:\n  shard_across_ranks: true\n  sample_rate: 0.5\n")
    (tmp_path / "shard.yaml").write_text(cfg)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "app.cli", "train-fr", "--config", str(tmp_path / "shard.yaml"),
        "--data", str(data), "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["world_size"] == 2 and card["prototype_shards"] == 2
    model = FRModel.load(out)  # the whole matrices, gathered from both slices
    assert model.real_prototypes.shape == (7, 32) and model.virtual_prototypes.shape == (5, 32)
    r0 = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    r1 = torch.load(out / "checkpoints" / "last.rank1.pt", weights_only=False)
    assert r0["module"]["head.real"].shape[0] + r1["module"]["head.real"].shape[0] == 7
    assert r0["module"]["head.virtual"].shape[0] + r1["module"]["head.virtual"].shape[0] == 5
    # each slice is what the artifact holds at its rows (r0 holds the first 4 real rows)
    assert torch.allclose(model.real_prototypes[:4], r0["module"]["head.real"].float())
    # the backbone's weights are the same on both ranks: DDP averaged their gradients and
    # one gradient norm over both slices clipped them alike (BatchNorm's running statistics
    # are each rank's own until DDP broadcasts rank 0's at the next forward)
    weights = [
        k
        for k in r0["module"]
        if k.startswith("backbone.") and "running" not in k and "num_batches" not in k
    ]
    assert len(weights) > 10
    for key in weights:
        assert torch.equal(r0["module"][key], r1["module"][key]), key
