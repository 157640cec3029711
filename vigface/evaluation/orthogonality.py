"""How far prototypes sit from each other: the statistics stored in every model card."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _max_cos_stats(a: torch.Tensor, b: torch.Tensor, same: bool, chunk: int = 4096) -> dict:
    """For each row of ``a`` its maximum cosine to any row of ``b`` (itself excluded if same)."""
    if a.shape[0] == 0 or b.shape[0] == 0 or (same and a.shape[0] < 2):
        return {"mean": None, "p99": None, "max": None}
    a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    maxes = []
    for i in range(0, a.shape[0], chunk):
        sim = a[i : i + chunk] @ b.T
        if same:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + i] = -2.0
        maxes.append(sim.max(dim=1).values)
    m = torch.cat(maxes)
    return {
        "mean": round(float(m.mean()), 4),
        "p99": round(float(torch.quantile(m, 0.99)), 4),
        "max": round(float(m.max()), 4),
    }


def orthogonality(real: torch.Tensor, virtual: torch.Tensor) -> dict:
    """Per-prototype max-cos stats: ``v_to_r``, ``r_to_r``, ``v_to_v``, each mean, p99, max."""
    return {
        "v_to_r": _max_cos_stats(virtual, real, same=False),
        "r_to_r": _max_cos_stats(real, real, same=True),
        "v_to_v": _max_cos_stats(virtual, virtual, same=True),
    }
