"""Keep the virtual prototypes W_V inside the subspace where face embeddings live.

Why this exists: a small FR backbone maps every face into a low-dimensional part of its
512-D output (the demo's: 90 % of the real prototypes' squared norm lies in 60 directions;
``experiments/virtual_subspace.py`` prints this and the numbers below). ArcFace pushes each w_v
away from every real prototype and every real embedding, and the cheapest way out is the
orthogonal complement, which no face reaches. Trained without a constraint, the demo's W_V
kept only 11 % of its energy in W_R's 60-D span, and no LFW image came closer than cosine
0.21 to any w_v, while every face sits at about 0.43 from its nearest other real prototype:
no face, generated or real, could match its virtual prototype better than some real person.
Projecting W_V onto the span of W_R's leading principal directions (enough of them to hold
``energy`` of W_R's squared norm) keeps virtual identities where faces are; the ArcFace loss
still spreads them away from the real identities, and from each other, inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def face_subspace(real_prototypes: torch.Tensor, energy: float) -> torch.Tensor:
    """Orthonormal rows ``(q, D)`` spanning the leading principal directions of the unit
    real prototypes, with ``q`` the fewest that hold ``energy`` of their squared norm.

    Uncentred (directions through the origin), because cosines are what ArcFace compares.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    w = F.normalize(real_prototypes.detach().float(), dim=1)
    _, s, vt = torch.linalg.svd(w, full_matrices=False)
    cum = (s**2).cumsum(0) / (s**2).sum()
    q = int((cum < energy - 1e-9).sum()) + 1
    return vt[: min(q, vt.shape[0])]


def project_rows(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Project each row of ``w`` onto the span of ``basis`` and give it back its norm."""
    p = (w.float() @ basis.T) @ basis
    scale = w.float().norm(dim=1, keepdim=True) / p.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (p * scale).to(w.dtype)


def energy_in_span(w: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean share of each (unit) row's squared norm inside the span: 1 = fully inside."""
    u = F.normalize(w.detach().float(), dim=1)
    return float(((u @ basis.T) ** 2).sum(1).mean())
