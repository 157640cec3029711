"""ArcFace over real and virtual prototypes: W = [W_R; W_V] in R^((n+k) x D)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vigface.losses.subspace import face_subspace, project_rows


def arcface_logits(
    cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """Scaled logits with the additive angular margin on the target class.

    ``s * cos(theta_y + m)`` for the target, ``s * cos(theta_j)`` elsewhere. Where
    ``theta_y + m`` would pass pi the curve is continued linearly
    (``cos theta_y - m sin m``), as insightface does, so the target logit stays monotone.
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold, fallback = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    target = cosine.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    sin_t = torch.sqrt(1.0 - target * target)
    with_margin = target * cos_m - sin_t * sin_m
    with_margin = torch.where(target > threshold, with_margin, target - fallback)
    logits = cosine.scatter(1, labels[:, None], with_margin.to(cosine.dtype))
    return logits * scale


class PrototypeHead(nn.Module):
    """The prototype matrix and the ArcFace loss for a batch of real and virtual embeddings.

    Rows ``0..n-1`` are the real identities (W_R), rows ``n..n+k-1`` the virtual ones (W_V).
    Virtual embeddings are computed from W_V by :class:`VirtualEmbeddingSampler` and enter
    the loss with the backbone and W_R detached, so the only parameters they move are W_V:
    the positive term pulls each w_v towards its own noisy samples, the negative terms push
    the other virtual prototypes away from it. W_V is pushed away from every real identity
    by the real embeddings, whose negative terms cover all n + k rows.
    """

    def __init__(
        self,
        num_real: int,
        num_virtual: int,
        embedding_dim: int = 512,
        scale: float = 64.0,
        margin: float = 0.5,
        sample_rate: float = 1.0,
    ):
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.num_real, self.num_virtual = num_real, num_virtual
        self.scale, self.margin, self.sample_rate = scale, margin, sample_rate
        self.real = nn.Parameter(torch.normal(0, 0.01, (num_real, embedding_dim)))
        self.virtual = nn.Parameter(torch.normal(0, 0.01, (num_virtual, embedding_dim)))

    @torch.no_grad()
    def constrain_virtual(self, energy: float) -> None:
        """Project W_V onto the face subspace of W_R (:mod:`vigface.losses.subspace`)."""
        self.virtual.copy_(project_rows(self.virtual, face_subspace(self.real, energy)))

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        virtual_embeddings: torch.Tensor | None = None,
        virtual_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean ArcFace loss over the ``b_r`` real and ``b_v`` virtual rows of the batch.

        ``labels`` index real rows (``0..n-1``); ``virtual_labels`` index W_V (``0..k-1``).
        """
        logits, targets = self.logits(embeddings, labels, virtual_embeddings, virtual_labels)
        return F.cross_entropy(logits, targets)

    def logits(self, embeddings, labels, virtual_embeddings=None, virtual_labels=None):
        """Margin logits and targets: ``b_r`` real rows first, then ``b_v`` virtual rows.

        With ``sample_rate`` < 1 (Partial FC, An et al. 2022, as insightface's arcface_torch
        does it) the logits cover only the classes of this batch's own real and virtual rows
        plus a random ``sample_rate`` share of the others, and the targets are indices into
        that subset: memory and compute for the head grow with the sample, not with n + k,
        which is what lets stage 1 hold 100,000+ virtual prototypes. At 1.0 every class is
        kept in order and the loss and gradients are the full softmax's."""
        has_virtual = virtual_embeddings is not None and virtual_embeddings.shape[0] > 0
        v_targets = virtual_labels + self.num_real if has_virtual else labels[:0]
        index, remap = self.sampled_classes(torch.cat([labels, v_targets]))
        w_real = F.normalize(self.real.float(), dim=1)
        w_virt = F.normalize(self.virtual.float(), dim=1)
        w = torch.cat([w_real, w_virt])
        w = w if index is None else w[index]
        cos = F.normalize(embeddings.float(), dim=1) @ w.T
        logits = [arcface_logits(cos, remap(labels), self.scale, self.margin)]
        targets = [remap(labels)]
        if has_virtual:
            f_v = F.normalize(virtual_embeddings.detach().float(), dim=1)
            w_v = torch.cat([w_real.detach(), w_virt])  # virtual rows never move W_R
            w_v = w_v if index is None else w_v[index]
            cos_v = f_v @ w_v.T
            logits.append(arcface_logits(cos_v, remap(v_targets), self.scale, self.margin))
            targets.append(remap(v_targets))
        return torch.cat(logits), torch.cat(targets)

    def sampled_classes(self, positives: torch.Tensor):
        """(the kept class rows in order, or None for all; a function mapping class rows to
        their column among the kept ones). Every class of ``positives`` is kept."""
        index, column = partial_fc_sample(self.num_real + self.num_virtual, positives,
                                          self.sample_rate)  # fmt: skip
        if index is None:
            return None, lambda rows: rows
        return index, lambda rows: column[rows]


def partial_fc_sample(total: int, positives: torch.Tensor, rate: float):
    """Partial FC's class sample among ``total`` classes: every class in ``positives`` plus
    random others up to ``rate * total``. Returns (kept classes in order, the column of each
    class among them or -1), or (None, None) when every class is kept."""
    keep = max(int(rate * total), int(positives.unique().numel()))
    if keep >= total:
        return None, None
    score = torch.rand(total, device=positives.device)
    score[positives] = 2.0  # above any random score: always kept
    index = score.topk(keep).indices.sort().values
    column = torch.full((total,), -1, dtype=torch.long, device=positives.device)
    column[index] = torch.arange(keep, device=positives.device)
    return index, column
