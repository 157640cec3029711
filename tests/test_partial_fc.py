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
