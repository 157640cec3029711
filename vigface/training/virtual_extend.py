"""More virtual identities for a model: rows appended to W_V, the rows already there untouched.

Each virtual identity is sold once, so a model's W_V is its stock. New rows are placed the way
the bundled W_V was given its spread (:mod:`vigface.training.virtual_spectrum`): drawn from
W_R's mean and covariance inside the face subspace. A draw is kept only if its cosine to every
real prototype is at most ``max_real_cos`` and to every other virtual one (old, or new and
kept before it) at most ``max_virtual_cos``; the rejections are counted. How many rows fit
under a bound is the embedding space's capacity: in a face subspace of a few dozen
dimensions, 100,000 rows crowd each other far more than 2,000 do, so the bounds are stated
in the card with the counts, and a draw budget stops a request the bounds cannot meet.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from vigface.fr_model import FRModel
from vigface.losses.subspace import face_subspace
from vigface.training.virtual_spectrum import _sqrtm


class CapacityExceeded(ValueError):
    """The bounds let fewer new rows in than asked within the draw budget."""


@dataclass
class Extension:
    added: int
    draws: int
    rejected_near_real: int
    rejected_near_virtual: int
    max_real_cos: float
    max_virtual_cos: float
    energy: float
    subspace_dims: int
    seed: int


def _max_cos(rows: torch.Tensor, others: torch.Tensor, chunk: int = 20_000) -> torch.Tensor:
    """Each row's largest cosine to any of ``others`` (unit rows), in bounded memory."""
    best = torch.full((len(rows),), -1.0)
    for start in range(0, len(others), chunk):
        best = torch.maximum(best, (rows @ others[start : start + chunk].T).max(1).values)
    return best


def nearest_other_p99(unit_rows: torch.Tensor) -> float:
    """The 99th percentile of each row's largest cosine to another row."""
    sims = unit_rows @ unit_rows.T
    sims.fill_diagonal_(-1.0)
    return round(float(sims.max(1).values.quantile(0.99)), 4)


def _greedy_apart(rows: torch.Tensor, bound: float) -> torch.Tensor:
    """Indices of a subset of ``rows`` (in order) no two of which exceed cosine ``bound``."""
    sims = rows @ rows.T
    kept: list[int] = []
    for i in range(len(rows)):
        if not kept or float(sims[i, kept].max()) <= bound:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def extend_virtual(
    fr: FRModel,
    add: int,
    max_real_cos: float | None = None,
    max_virtual_cos: float | None = None,
    energy: float = 0.9,
    seed: int = 0,
    batch: int = 4096,
    draw_budget: int | None = None,
) -> tuple[FRModel, Extension]:
    """A copy of ``fr`` with ``add`` rows appended to W_V (unit rows scaled to the mean norm
    of the existing ones). ``max_real_cos`` defaults to the 99th percentile of real
    prototypes' nearest-other cosine (real people's own crowding), ``max_virtual_cos`` to the
    same. Raises CapacityExceeded when ``draw_budget`` (default 20 x ``add``) draws do not
    yield ``add`` rows under the bounds."""
    if add < 1:
        raise ValueError(f"add must be at least 1, got {add}")
    real = F.normalize(fr.real_prototypes.float().cpu(), dim=1)
    virtual_stored = fr.virtual_prototypes.float().cpu()
    virtual = F.normalize(virtual_stored, dim=1)
    real_p99 = nearest_other_p99(real)
    max_real_cos = real_p99 if max_real_cos is None else max_real_cos
    max_virtual_cos = real_p99 if max_virtual_cos is None else max_virtual_cos
    for name, bound in (("max_real_cos", max_real_cos), ("max_virtual_cos", max_virtual_cos)):
        if not -1 < bound < 1:
            raise ValueError(f"{name} must be a cosine in (-1, 1), got {bound}")
    basis = face_subspace(real, energy).double()
    coords = real.double() @ basis.T
    mean, root = coords.mean(0), _sqrtm(torch.cov(coords.T))
    gen = torch.Generator().manual_seed(seed)
    budget = draw_budget if draw_budget is not None else 20 * add
    kept = virtual
    new: list[torch.Tensor] = []
    ext = Extension(0, 0, 0, 0, max_real_cos, max_virtual_cos, energy, basis.shape[0], seed)
    while ext.added < add and ext.draws < budget:
        n = min(batch, budget - ext.draws)
        z = torch.randn(n, basis.shape[0], generator=gen, dtype=torch.float64)
        rows = F.normalize((mean + z @ root) @ basis, dim=1).float()
        ext.draws += n
        ok_real = _max_cos(rows, real) <= max_real_cos + 1e-6
        ext.rejected_near_real += int((~ok_real).sum())
        rows = rows[ok_real]
        if len(kept):
            ok_virtual = _max_cos(rows, kept) <= max_virtual_cos
            ext.rejected_near_virtual += int((~ok_virtual).sum())
            rows = rows[ok_virtual]
        apart = _greedy_apart(rows, max_virtual_cos)
        ext.rejected_near_virtual += len(rows) - len(apart)
        rows = rows[apart][: add - ext.added]
        new.append(rows)
        kept = torch.cat([kept, rows])
        ext.added += len(rows)
    if ext.added < add:
        raise CapacityExceeded(
            f"only {ext.added} of {add} new rows fit under max_real_cos {max_real_cos:.4f} and "
            f"max_virtual_cos {max_virtual_cos:.4f} in {ext.draws} draws ({ext.rejected_near_real}"
            f" too near a real prototype, {ext.rejected_near_virtual} too near a virtual one); "
            "loosen a bound (the card states it) or add fewer"
        )
    scale = virtual_stored.norm(dim=1).mean() if len(virtual_stored) else torch.tensor(1.0)
    out = copy.copy(fr)
    appended = torch.cat(new) * scale
    out.virtual_prototypes = torch.cat([virtual_stored, appended]).to(fr.virtual_prototypes.dtype)
    out.card = {
        **fr.card,
        "virtual_extensions": [*fr.card.get("virtual_extensions", []), asdict(ext)],
    }
    return out, ext
