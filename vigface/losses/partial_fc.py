"""Partial FC with the prototype rows split across ranks (An et al. 2022; insightface
``arcface_torch`` ``PartialFC_V2``): the head for 100,000+ virtual identities on several GPUs.

Each of ``W`` ranks holds a contiguous slice of W_R and a contiguous slice of W_V, never the
whole matrix: at 1M classes x 512 the matrix, its gradient and momentum are 6 GB, a slice is
``1 / W`` of it. A step:

1. every rank's embeddings and labels are all-gathered (the embeddings with a gradient path
   back to the rank that made them), and so are its virtual embeddings (drawn from its own
   slice of W_V with the shared sigma; constants, as in :class:`PrototypeHead`);
2. each rank computes ArcFace logits of *all* gathered rows against its own slice, keeping
   (Partial FC) the slice's classes that are some row's target plus a ``sample_rate`` share
   of the rest; virtual rows see W_R detached, so they move W_V only;
3. the softmax cross-entropy is computed across the slices (:class:`DistributedCrossEntropy`:
   max and sum of exponentials all-reduced), giving every rank the loss of the whole batch.

At ``sample_rate`` 1 the loss and the gradients of every prototype row equal the full
softmax's over the concatenated batch (``tests/vigface/test_partial_fc.py``, two gloo processes).
The gradient of each rank's own embeddings is the full one times ``W``: DDP averages the
backbone's gradients over ranks, which brings it back (arcface_torch does the same).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vigface.losses.arcface import arcface_logits, partial_fc_sample


def shard_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of the rows rank ``rank`` holds: contiguous, sizes differing by <= 1."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every rank's ``x`` concatenated in rank order (first dimensions may differ), and the
    row count each rank gave."""
    world = dist.get_world_size()
    sizes_t = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([len(x)], device=x.device))
    sizes = [int(s) for s in sizes_t]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]), sizes


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum of every rank's gradient for its own
    rows, times the world size (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, ctx.sizes = _all_gather_rows(x)
        ctx.rank = dist.get_rank()
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather of tensors whose first dimension may differ between ranks (no gradient)."""
    return _all_gather_rows(x)[0]


class DistributedCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over logits whose columns are split across ranks. ``target``
    holds each row's column in this rank's logits, or -1 where the target lives elsewhere.
    Forward: the mean loss of all rows (the same on every rank). Backward: this rank's
    columns' exact gradient ``(softmax - onehot) / N``, with no further communication."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        top = logits.max(1, keepdim=True).values
        dist.all_reduce(top, dist.ReduceOp.MAX)
        exp = (logits - top).exp()
        total = exp.sum(1, keepdim=True)
        dist.all_reduce(total)
        prob = exp / total
        here = target >= 0
        picked = torch.zeros(len(logits), device=logits.device)
        picked[here] = prob[here, target[here]]
        dist.all_reduce(picked)
        ctx.save_for_backward(prob, target)
        return -picked.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, target = ctx.saved_tensors
        here = torch.nonzero(target >= 0).squeeze(1)
        prob = prob.clone()
        prob[here, target[here]] -= 1
        return prob * grad / len(prob), None


class ShardedPrototypeHead(nn.Module):
    """This rank's slice of [W_R; W_V] and the ArcFace loss of the whole (gathered) batch.

    ``real`` holds global real rows ``real_range``, ``virtual`` global virtual rows
    ``virtual_range``; labels given to ``forward`` are global (real ``0..n-1``, virtual
    ``0..k-1``). Needs an initialised process group."""

    def __init__(
        self,
        num_real: int,
        num_virtual: int,
        embedding_dim: int = 512,
        scale: float = 64.0,
        margin: float = 0.5,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
        self.num_real, self.num_virtual = num_real, num_virtual
        self.scale, self.margin, self.sample_rate = scale, margin, sample_rate
        self.real_range = shard_range(num_real, rank, world_size)
        self.virtual_range = shard_range(num_virtual, rank, world_size)
        r0, r1 = self.real_range
        v0, v1 = self.virtual_range
        self.real = nn.Parameter(torch.normal(0, 0.01, (r1 - r0, embedding_dim)))
        self.virtual = nn.Parameter(torch.normal(0, 0.01, (v1 - v0, embedding_dim)))

    @property
    def local_classes(self) -> int:
        return len(self.real) + len(self.virtual)

    def local_columns(self, real_labels: torch.Tensor, virtual_labels: torch.Tensor):
        """Each row's column among this slice's classes ([own real rows; own virtual rows]),
        -1 when its class lives on another rank."""
        (r0, r1), (v0, v1) = self.real_range, self.virtual_range
        real_col = torch.where((real_labels >= r0) & (real_labels < r1), real_labels - r0, -1)
        virt_col = torch.where(
            (virtual_labels >= v0) & (virtual_labels < v1), virtual_labels - v0 + (r1 - r0), -1
        )
        return torch.cat([real_col, virt_col])

    def sampled_columns(self, positives: torch.Tensor):
        """Partial FC on this slice: (kept columns in order or None for all, remap)."""
        index, column = partial_fc_sample(
            self.local_classes, positives[positives >= 0], self.sample_rate
        )
        if index is None:
            return None, lambda cols: cols
        return index, lambda cols: torch.where(cols >= 0, column[cols.clamp_min(0)], -1)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        virtual_embeddings: torch.Tensor | None = None,
        virtual_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean ArcFace loss over every rank's real and virtual rows (same value on all)."""
        f = gather_with_grad(embeddings.float())
        y = gather(labels)
        if virtual_embeddings is None:
            virtual_embeddings = embeddings.new_zeros((0, embeddings.shape[1]))
            virtual_labels = labels[:0]
        f_v = gather(virtual_embeddings.detach().float())
        y_v = gather(virtual_labels)
        cols = self.local_columns(y, y_v)
        index, remap = self.sampled_columns(cols)
        cols = remap(cols)
        w_real = F.normalize(self.real.float(), dim=1)
        w_virt = F.normalize(self.virtual.float(), dim=1)
        w = torch.cat([w_real, w_virt])
        w_for_virtual = torch.cat([w_real.detach(), w_virt])  # virtual rows never move W_R
        if index is not None:
            w, w_for_virtual = w[index], w_for_virtual[index]
        logits = torch.cat([
            margin_logits(F.normalize(f, dim=1) @ w.T, cols[: len(f)], self.scale, self.margin),
            margin_logits(F.normalize(f_v, dim=1) @ w_for_virtual.T, cols[len(f):],
                          self.scale, self.margin),
        ])  # fmt: skip
        return DistributedCrossEntropy.apply(logits, cols)

    @torch.no_grad()
    def batch_variance(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-dimension mean of ``(f/|f| - w_y/|w_y|)^2`` over every rank's rows (the
        sigma rule's batch term): each rank sums the rows whose prototype it holds, then the
        sums and counts are all-reduced (collective)."""
        f, y = gather(embeddings.float()), gather(labels)
        r0, r1 = self.real_range
        here = (y >= r0) & (y < r1)
        diff = F.normalize(f[here], dim=1) - F.normalize(self.real[y[here] - r0].float(), dim=1)
        total = torch.cat([diff.pow(2).sum(0), here.sum().float().view(1)])
        dist.all_reduce(total)
        return total[:-1] / total[-1].clamp_min(1)

    @torch.no_grad()
    def gather_full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_R, W_V) whole, on every rank (collective: every rank must call it)."""
        return gather(self.real.detach()), gather(self.virtual.detach())


def margin_logits(cos: torch.Tensor, cols: torch.Tensor, scale: float, margin: float):
    """:func:`arcface_logits` for rows whose target may live on another rank (col -1): those
    rows get plain scaled cosines here."""
    here = cols >= 0
    if not here.any():
        return cos * scale
    out = cos * scale
    out[here] = arcface_logits(cos[here], cols[here], scale, margin)
    return out


@torch.no_grad()
def clip_grad_norm_sharded(shared: list, own: list, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over parameters of which ``shared`` are the same on every rank
    (DDP-averaged) and ``own`` are this rank's slice: the norm counts every slice once, so
    every rank scales by the same factor and the shared parameters stay identical."""
    shared = [p.grad for p in shared if p.grad is not None]
    own = [p.grad for p in own if p.grad is not None]
    device = (shared or own)[0].device
    own_sq = sum((g.float().pow(2).sum() for g in own), torch.zeros((), device=device))
    dist.all_reduce(own_sq)
    shared_sq = sum((g.float().pow(2).sum() for g in shared), torch.zeros((), device=device))
    norm = (shared_sq + own_sq).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in shared + own:
        g.mul_(scale.to(g.dtype))
    return norm
