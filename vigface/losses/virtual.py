"""Virtual embeddings for the virtual prototypes (VIGFace eq. 1-2).

Virtual identities have no images, so each batch of ``b_r`` real samples is joined by
``b_v = round(k * b_r / n)`` synthetic embeddings ``f' = w_v^j + N(0, I) * sigma`` for
uniformly drawn virtual classes ``j``; ``b_v / b_r = k / n`` keeps the update rate of a virtual
prototype equal, on average, to that of a real one.

Choices the paper leaves open, and why:

* **Normalised space.** ArcFace only sees directions: ``cos(f, w)`` of unit vectors. The raw
  backbone output has a norm of tens (a BatchNorm1d output) while prototypes start near
  0.01, so ``f - w`` in raw units would measure scale, not scatter. ``sigma`` is therefore
  estimated from ``f/|f| - w/|w|`` and the noise is added to ``w_v/|w_v|``; the head
  normalises ``f'`` again.
* **Per-dimension sigma.** The paper's ``sigma^2 = (1/b) sum_i (f(x_i) - w_{y_i})^2`` is an
  element-wise square, i.e. one variance per embedding dimension, and we keep it so: it lets
  the virtual scatter follow the anisotropy of the real one. The EMA over batches
  (alpha = 0.9, about ten batches of memory) keeps the per-dimension estimate stable.
* **EMA on the variance**: ``sigma^2 <- alpha * sigma^2 + (1 - alpha) * sigma_batch^2``,
  initialised with the first batch; under DDP the batch variance is averaged over ranks
  first, so every rank holds the same state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def num_virtual_per_batch(num_real_in_batch: int, num_real: int, num_virtual: int) -> int:
    """``b_v = round(k * b_r / n)``."""
    if num_virtual == 0:
        return 0
    return int(round(num_virtual * num_real_in_batch / num_real))


class VirtualEmbeddingSampler(nn.Module):
    """Holds the EMA of the real-embedding variance and draws virtual embeddings from it."""

    def __init__(self, embedding_dim: int = 512, alpha: float = 0.9):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("variance", torch.zeros(embedding_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def sigma(self) -> torch.Tensor:
        return self.variance.sqrt()

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Fold in the batch variance of ``f(x_i) - w_{y_i}``; ``prototypes`` are ``w_{y_i}``.

        Returns the batch variance (per dimension) for logging.
        """
        diff = F.normalize(embeddings.float(), dim=1) - F.normalize(prototypes.float(), dim=1)
        batch_var = diff.pow(2).mean(0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_var)
            batch_var /= dist.get_world_size()
        return self.fold(batch_var)

    @torch.no_grad()
    def fold(self, batch_var: torch.Tensor) -> torch.Tensor:
        """The EMA step alone, for a batch variance computed elsewhere (the sharded head
        computes it across ranks, each for the rows whose prototype it holds)."""
        if bool(self.initialized):
            self.variance.mul_(self.alpha).add_((1 - self.alpha) * batch_var)
        else:
            self.variance.copy_(batch_var)
            self.initialized.fill_(True)
        return batch_var

    @torch.no_grad()
    def sample(
        self, virtual_prototypes: torch.Tensor, count: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``count`` virtual embeddings and their labels (indices into W_V)."""
        k = virtual_prototypes.shape[0]
        device = virtual_prototypes.device
        labels = torch.randint(0, k, (count,), device=device, generator=generator)
        centres = F.normalize(virtual_prototypes[labels].float(), dim=1)
        noise = torch.randn(centres.shape, device=device, generator=generator)
        return centres + noise * self.sigma, labels
