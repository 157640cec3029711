"""Partial FC over [W_R; W_V]: at sample rate 1.0 it is the full softmax (same loss, same
gradients); below it, each step's logits cover the batch's own classes plus a sample."""

from __future__ import annotations

import pytest
import torch

from vigface.losses import PrototypeHead


def _heads(rate: float):
    torch.manual_seed(0)
    full = PrototypeHead(num_real=30, num_virtual=20, embedding_dim=16, scale=16, margin=0.3)
    part = PrototypeHead(30, 20, 16, scale=16, margin=0.3, sample_rate=rate)
    part.load_state_dict(full.state_dict())
    return full, part


def _batch():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(8, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 30, (8,), generator=g)
    v_emb = torch.randn(3, 16, generator=g)
    v_lab = torch.randint(0, 20, (3,), generator=g)
    return emb, labels, v_emb, v_lab


def test_sample_rate_one_is_the_full_softmax_in_loss_and_gradients():
    full, part = _heads(1.0)
    emb, labels, v_emb, v_lab = _batch()
    loss_full = full(emb, labels, v_emb, v_lab)
    grads_full = torch.autograd.grad(loss_full, [emb, full.real, full.virtual])
    loss_part = part(emb, labels, v_emb, v_lab)
    grads_part = torch.autograd.grad(loss_part, [emb, part.real, part.virtual])
    assert torch.equal(loss_full, loss_part)
    for a, b in zip(grads_full, grads_part, strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_a_sample_keeps_the_batchs_classes_and_touches_only_sampled_rows():
    _, part = _heads(0.2)
    emb, labels, v_emb, v_lab = _batch()
    torch.manual_seed(5)
    logits, targets = part.logits(emb, labels, v_emb, v_lab)
    assert logits.shape == (11, 10)  # 20 % of 50 classes; the batch's own all among them
    assert (targets >= 0).all() and (targets < 10).all()
    torch.manual_seed(5)
    loss = part(emb, labels, v_emb, v_lab)
    g_real, g_virt = torch.autograd.grad(loss, [part.real, part.virtual])
    touched = int((g_real.abs().sum(1) > 0).sum() + (g_virt.abs().sum(1) > 0).sum())
    assert touched <= 10
    own = set(labels.tolist()) | {30 + v for v in v_lab.tolist()}
    rows = torch.cat([g_real.abs().sum(1), g_virt.abs().sum(1)])
    assert all(rows[c] > 0 for c in own)  # every positive class gets its gradient
    # more positives than the sample: all of them are kept anyway
    _, tiny = _heads(0.02)
    logits, _ = tiny.logits(emb, labels, v_emb, v_lab)
    assert logits.shape[1] == len(own)


def test_the_rate_is_checked():
    with pytest.raises(ValueError, match="sample_rate"):
        PrototypeHead(3, 2, 4, sample_rate=0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        PrototypeHead(3, 2, 4, sample_rate=1.5)


def test_stage_one_trains_with_a_sampled_head(face_folder, tmp_path):
    import yaml

    from conftest import TINY_CONFIG
    from vigface.config import TrainFRConfig
    from vigface.training.fr import train_fr

    raw = yaml.safe_load(TINY_CONFIG)
    raw["head"]["sample_rate"] = 0.5
    fr = train_fr(TrainFRConfig.model_validate(raw), face_folder, tmp_path / "fr", progress=False)
    assert fr.real_prototypes.shape[0] == 6 and fr.virtual_prototypes.shape[0] == 4
    assert torch.isfinite(fr.real_prototypes).all()


# --- prototype rows split across ranks (two gloo processes) -------------------------------


def _sharded_worker(rank: int, world: int, port: int, rate: float, queue) -> None:
    import os

    import torch.distributed as dist

    from vigface.losses.partial_fc import ShardedPrototypeHead

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    full, _ = _heads(1.0)
    head = ShardedPrototypeHead(30, 20, 16, scale=16, margin=0.3, sample_rate=rate)
    (r0, r1), (v0, v1) = head.real_range, head.virtual_range
    with torch.no_grad():
        head.real.copy_(full.real[r0:r1])
        head.virtual.copy_(full.virtual[v0:v1])
    emb, labels, v_emb, v_lab = _batch()
    # each rank brings its half of the batch (5 and 3 real rows; 2 and 1 virtual rows)
    cut, vcut = (slice(0, 5), slice(0, 2)) if rank == 0 else (slice(5, 8), slice(2, 3))
    mine = emb.detach()[cut].clone().requires_grad_(True)
    torch.manual_seed(11 + rank)
    loss = head(mine, labels[cut], v_emb[vcut], v_lab[vcut])
    g_emb, g_real, g_virt = torch.autograd.grad(loss, [mine, head.real, head.virtual])
    real, virtual = head.gather_full()
    # numpy arrays travel by value: a tensor would travel as a file descriptor that the
    # parent can fail to fetch once this process has exited ("connection reset by peer")
    queue.put(
        (rank, float(loss), g_emb.numpy(), (r0, r1, g_real.numpy()), (v0, v1, g_virt.numpy()),
         tuple(real.shape), tuple(virtual.shape))
    )  # fmt: skip
    dist.destroy_process_group()


def _run_sharded(rate: float) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_sharded_worker, args=(r, 2, port, rate, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        rank, loss, g_emb, (r0, r1, g_real), (v0, v1, g_virt), *shapes = queue.get(timeout=120)
        as_tensor = torch.from_numpy
        got[rank] = [loss, as_tensor(g_emb), (r0, r1, as_tensor(g_real)),
                     (v0, v1, as_tensor(g_virt)), *shapes]  # fmt: skip
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_rows_split_over_two_gloo_ranks_give_the_full_softmax_at_sample_rate_one():
    full, _ = _heads(1.0)
    emb, labels, v_emb, v_lab = _batch()
    loss_full = full(emb, labels, v_emb, v_lab)
    g_emb, g_real, g_virt = torch.autograd.grad(loss_full, [emb, full.real, full.virtual])
    got = _run_sharded(1.0)
    for rank, (loss, ge, (r0, r1, gr), (v0, v1, gv), real_shape, virt_shape) in got.items():
        assert abs(loss - loss_full.item()) < 1e-5, rank  # every rank: the whole batch's loss
        assert torch.allclose(gr, g_real[r0:r1], atol=1e-6)  # its slice of W_R's gradient
        assert torch.allclose(gv, g_virt[v0:v1], atol=1e-6)
        rows = slice(0, 5) if rank == 0 else slice(5, 8)
        # own embeddings: the full gradient times the world size (DDP averages it back)
        assert torch.allclose(ge / 2, g_emb[rows], atol=1e-6)
        assert real_shape == (30, 16) and virt_shape == (20, 16)
    assert {got[0][2][:2], got[1][2][:2]} == {(0, 15), (15, 30)}


def test_rows_split_over_ranks_with_a_sample_touch_the_batchs_classes_and_a_share():
    got = _run_sharded(0.2)
    emb, labels, v_emb, v_lab = _batch()
    own_real, own_virt = set(labels.tolist()), set(v_lab.tolist())
    losses = {round(r[0], 6) for r in got.values()}
    assert len(losses) == 1  # the same loss on every rank
    for _rank, (_, _, (r0, r1, gr), (v0, v1, gv), *_rest) in got.items():
        touched_real = {r0 + i for i in torch.nonzero(gr.abs().sum(1)).flatten().tolist()}
        touched_virt = {v0 + i for i in torch.nonzero(gv.abs().sum(1)).flatten().tolist()}
        assert {c for c in own_real if r0 <= c < r1} <= touched_real
        assert {c for c in own_virt if v0 <= c < v1} <= touched_virt
        # 20 % of this rank's 25 classes (5), or its positives when they are more
        positives = len({c for c in own_real if r0 <= c < r1}) + len(
            {c for c in own_virt if v0 <= c < v1}
        )
        assert len(touched_real) + len(touched_virt) <= max(5, positives)


def test_shard_ranges_cover_every_row_once():
    from vigface.losses.partial_fc import shard_range

    for total in (0, 1, 7, 100_048):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(total, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            sizes = [e - s for s, e in ranges]
            assert max(sizes) - min(sizes) <= 1
