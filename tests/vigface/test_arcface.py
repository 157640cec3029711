import math

import torch
import torch.nn.functional as F

from vigface.losses import PrototypeHead, arcface_logits


def test_arcface_logits_match_direct_formula():
    torch.manual_seed(0)
    cos = torch.rand(6, 10) * 1.6 - 0.6  # theta + m stays below pi here
    labels = torch.randint(0, 10, (6,))
    s, m = 64.0, 0.5
    got = arcface_logits(cos, labels, s, m)
    expected = cos.clone() * s
    for i, y in enumerate(labels):
        expected[i, y] = s * math.cos(math.acos(float(cos[i, y])) + m)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_arcface_margin_falls_back_linearly_past_pi():
    m = 0.5
    cos = torch.tensor([[-0.95, 0.1]])  # theta_y close to pi: cos(theta+m) would rise again
    got = arcface_logits(cos, torch.tensor([0]), 1.0, m)
    assert math.isclose(float(got[0, 0]), -0.95 - math.sin(math.pi - m) * m, rel_tol=1e-5)


def test_head_loss_is_cross_entropy_over_real_and_virtual_rows():
    torch.manual_seed(0)
    head = PrototypeHead(3, 2, embedding_dim=4, scale=10.0, margin=0.2)
    f, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    fv, yv = torch.randn(2, 4), torch.tensor([0, 1])
    W = F.normalize(torch.cat([head.real, head.virtual]).detach(), dim=1)
    cos = F.normalize(torch.cat([f, fv]), dim=1) @ W.T
    target = torch.cat([y, yv + 3])
    # the ArcFace formula written out: s * cos(theta_y + m) on the target, s * cos elsewhere
    # (theta_y + m < pi for these draws, checked below)
    theta = torch.acos(cos.gather(1, target[:, None]).clamp(-1, 1))
    assert float((theta + 0.2).max()) < math.pi
    logits = 10.0 * cos.scatter(1, target[:, None], torch.cos(theta + 0.2))
    expected = F.cross_entropy(logits, target)
    torch.testing.assert_close(head(f, y, fv, yv), expected)
