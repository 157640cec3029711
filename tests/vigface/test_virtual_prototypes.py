"""Paper details of stage 1: b_v, the sigma EMA, and where virtual gradients go."""

import math

import pytest
import torch
import torch.nn.functional as F

from vigface.config import TrainFRConfig
from vigface.losses import PrototypeHead, VirtualEmbeddingSampler, num_virtual_per_batch
from vigface.training.fr import FRTrainingModule


@pytest.mark.parametrize(
    "b_r,n,k,expected",
    [(128, 4024, 2048, 65), (128, 1000, 0, 0), (64, 100, 100, 64), (10, 3, 1, 3)],
)
def test_virtual_batch_size_is_k_br_over_n(b_r, n, k, expected):
    assert num_virtual_per_batch(b_r, n, k) == expected == round(k * b_r / n)


def test_sigma_is_per_dimension_batch_variance_then_ema():
    torch.manual_seed(0)
    s = VirtualEmbeddingSampler(embedding_dim=4, alpha=0.9)
    f1, w1 = torch.randn(16, 4), torch.randn(16, 4)
    f2, w2 = torch.randn(16, 4), torch.randn(16, 4)
    v1 = (F.normalize(f1, dim=1) - F.normalize(w1, dim=1)).pow(2).mean(0)
    v2 = (F.normalize(f2, dim=1) - F.normalize(w2, dim=1)).pow(2).mean(0)
    s.update(f1, w1)
    torch.testing.assert_close(s.variance, v1)  # first batch initialises the EMA
    s.update(f2, w2)
    torch.testing.assert_close(s.variance, 0.9 * v1 + 0.1 * v2)
    torch.testing.assert_close(s.sigma, (0.9 * v1 + 0.1 * v2).sqrt())
    # the state travels with the module, so a resumed run continues the same EMA
    s2 = VirtualEmbeddingSampler(embedding_dim=4)
    s2.load_state_dict(s.state_dict())
    torch.testing.assert_close(s2.variance, s.variance)
    assert bool(s2.initialized)


def test_virtual_embeddings_are_prototype_plus_scaled_noise():
    s = VirtualEmbeddingSampler(embedding_dim=3)
    s.variance.copy_(torch.tensor([0.0, 0.04, 1.0]))
    s.initialized.fill_(True)
    protos = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    g = torch.Generator().manual_seed(3)
    emb, labels = s.sample(protos, 20000, generator=g)
    assert emb.shape == (20000, 3) and labels.min() >= 0 and labels.max() <= 1
    centres = F.normalize(protos, dim=1)[labels]
    noise = emb - centres
    assert torch.all(noise[:, 0] == 0)  # sigma 0 in dim 0: no noise there
    assert abs(float(noise[:, 1].std()) - 0.2) < 0.01
    assert abs(float(noise[:, 2].std()) - 1.0) < 0.03
    assert abs(float((labels == 0).float().mean()) - 0.5) < 0.02  # uniform over W_V


def test_virtual_embeddings_move_only_virtual_prototypes():
    torch.manual_seed(0)
    head = PrototypeHead(num_real=5, num_virtual=3, embedding_dim=8, scale=16, margin=0.3)
    backbone = torch.nn.Linear(8, 8)
    x, y = torch.randn(4, 8), torch.randint(0, 5, (4,))
    sampler = VirtualEmbeddingSampler(8)
    feats = backbone(x)
    sampler.update(feats.detach(), head.real.detach()[y])
    v_emb, v_lab = sampler.sample(head.virtual.detach(), 6)

    logits, targets = head.logits(feats, y, v_emb, v_lab)
    virtual_loss = F.cross_entropy(logits[4:], targets[4:])  # rows b_r.. are the virtual ones
    assert torch.all(targets[4:] >= 5)
    g_backbone, g_real, g_virtual = torch.autograd.grad(
        virtual_loss, [backbone.weight, head.real, head.virtual], allow_unused=True
    )
    for g in (g_backbone, g_real):  # exactly zero: no path, or a path through zeros only
        assert g is None or torch.count_nonzero(g) == 0
    assert g_virtual.abs().sum() > 0


def test_real_embeddings_push_virtual_prototypes_and_train_backbone():
    torch.manual_seed(0)
    head = PrototypeHead(num_real=5, num_virtual=3, embedding_dim=8, scale=16, margin=0.3)
    backbone = torch.nn.Linear(8, 8)
    loss = head(backbone(torch.randn(4, 8)), torch.randint(0, 5, (4,)))
    loss.backward()
    assert backbone.weight.grad.abs().sum() > 0
    assert head.virtual.grad.abs().sum() > 0  # negatives: real samples repel W_V


def test_training_module_adds_bv_virtual_rows(monkeypatch):
    cfg = TrainFRConfig.model_validate(
        {
            "backbone": {
                "layers": [1, 1, 1, 1],
                "widths": [4, 4, 8, 8],
                "input_size": 16,
                "embedding_dim": 8,
            },
            "head": {"num_virtual": 6, "scale": 8, "margin": 0.2},
        }
    )
    module = FRTrainingModule(cfg, num_real=4)
    seen = {}
    orig = module.head.forward

    def spy(feats, labels, v_emb=None, v_lab=None):
        seen["b_v"] = 0 if v_emb is None else v_emb.shape[0]
        return orig(feats, labels, v_emb, v_lab)

    monkeypatch.setattr(module.head, "forward", spy)
    module(torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    assert seen["b_v"] == round(6 * 8 / 4) == 12
    assert bool(module.sampler.initialized)
    assert math.isfinite(float(module.sampler.sigma.sum()))
