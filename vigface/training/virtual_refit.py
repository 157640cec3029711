"""Re-fit the virtual prototypes W_V of a trained FR model inside the face subspace.

In stage 1 the only parameters the virtual embeddings move are W_V, and W_V reaches the
backbone only as extra negatives for the real samples. With the backbone and W_R frozen the
W_V part of stage 1 therefore needs nothing but the real embeddings, computed once: this
module runs exactly that part of the stage-1 loss (real embeddings, and virtual embeddings
``w_v + N(0, I) * sigma`` with the model's stored sigma, through the same ArcFace head) with
the subspace constraint of :mod:`vigface.losses.subspace` after every step. It turns a model
trained without the constraint into one whose virtual identities a generator can draw,
without touching the backbone, W_R, or a generator trained on W_R; it takes minutes on a CPU.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vigface.data import DatasetError
from vigface.evaluation.orthogonality import orthogonality
from vigface.fr_model import FRModel
from vigface.losses import PrototypeHead, VirtualEmbeddingSampler, num_virtual_per_batch
from vigface.losses.subspace import energy_in_span, face_subspace, project_rows
from vigface.training.fr import load_training_set

log = logging.getLogger(__name__)


def real_embeddings(fr: FRModel, data_dir: str | Path, progress: bool = True):
    """Unit embeddings of the training images and of their mirror images, with labels."""
    images, labels, classes, _ = load_training_set(Path(data_dir), fr.config, progress)
    if classes != fr.classes:
        raise DatasetError(
            f"{data_dir} does not hold the {len(fr.classes)} identities this model was trained on"
        )
    emb = torch.cat(
        [
            fr.embed(images, flip=False),
            fr.embed(np.ascontiguousarray(images[:, :, ::-1]), flip=False),
        ]
    )
    return emb, torch.from_numpy(np.concatenate([labels, labels])).long()


def refit_state(fr: FRModel, energy: float):
    """The stage-1 head with W_R frozen and W_V projected into the face subspace, and the
    virtual-embedding sampler at the model's stored sigma."""
    n, k = fr.real_prototypes.shape[0], fr.virtual_prototypes.shape[0]
    dim = fr.real_prototypes.shape[1]
    head = PrototypeHead(n, k, dim, fr.config.head.scale, fr.config.head.margin)
    basis = face_subspace(fr.real_prototypes, energy)
    with torch.no_grad():
        head.real.copy_(fr.real_prototypes)
        head.virtual.copy_(project_rows(fr.virtual_prototypes, basis))
    head.real.requires_grad_(False)
    sampler = VirtualEmbeddingSampler(dim)
    sampler.variance.copy_(fr.sigma.float() ** 2)
    sampler.initialized.fill_(True)
    return head, basis, sampler


def refit_virtual(
    fr: FRModel,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    energy: float = 0.9,
    steps: int = 1500,
    batch_size: int = 512,
    lr: float = 0.1,
    seed: int = 0,
    max_real_cos: float | None = None,
    real_margin_weight: float = 50.0,
    progress: bool = True,
) -> FRModel:
    """A copy of ``fr`` with W_V re-fitted under the subspace constraint; the card records
    the settings and the prototype statistics before and after.

    ``max_real_cos`` adds ``real_margin_weight * mean_v relu(max_r cos(w_v, w_r) - max_real_cos)``
    over all of W_V: a hinge that pulls the virtual prototypes still closer to some real
    identity than ``max_real_cos`` away from it. Inside a 60-D subspace ArcFace alone leaves W_V as
    close to W_R as real identities are to each other (demo: nearest-real mean 0.40, p99
    0.48); the images of a prototype sit a little closer still to real people, and the tail
    of that is what the leakage filter drops.
    """
    if fr.virtual_prototypes.shape[0] == 0:
        raise ValueError("the model has no virtual prototypes to refit")
    t0 = time.time()
    n, k = fr.real_prototypes.shape[0], fr.virtual_prototypes.shape[0]
    head, basis, sampler = refit_state(fr, energy)
    opt = torch.optim.SGD([head.virtual], lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    b_v = num_virtual_per_batch(batch_size, n, k)
    real_unit = F.normalize(fr.real_prototypes.float(), dim=1)
    losses = []
    for _ in tqdm(range(steps), desc="refit W_V", disable=not progress, leave=False):
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen)
        v_emb, v_lab = sampler.sample(head.virtual.detach(), b_v, generator=gen)
        loss = head(embeddings[idx], labels[idx], v_emb, v_lab)
        if max_real_cos is not None:
            near = (F.normalize(head.virtual, dim=1) @ real_unit.T).max(1).values
            loss = loss + real_margin_weight * F.relu(near - max_real_cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # W_R is frozen here, so the subspace is computed once
            head.virtual.copy_(project_rows(head.virtual, basis))
        losses.append(float(loss.detach()))
    out = copy.copy(fr)
    out.virtual_prototypes = head.virtual.detach().clone()
    out.config = fr.config.model_copy(deep=True)
    out.config.head.virtual_subspace_energy = energy
    earlier = fr.card.get("virtual_refit_history", [])
    if "virtual_refit" in fr.card:  # a refit of a refit keeps the record of the first
        earlier = [*earlier, fr.card["virtual_refit"]]
    record = {
        "energy": energy,
        "subspace_dims": int(basis.shape[0]),
        "steps": steps,
        "batch_size": batch_size,
        "virtual_per_batch": b_v,
        "lr": lr,
        "seed": seed,
        "max_real_cos": max_real_cos,
        "real_margin_weight": real_margin_weight if max_real_cos is not None else None,
        "loss_first_100": round(float(np.mean(losses[:100])), 4),
        "loss_last_100": round(float(np.mean(losses[-100:])), 4),
        "seconds": round(time.time() - t0, 1),
    }
    out.card = {
        **fr.card,
        "virtual_refit_history": earlier,
        "virtual_refit": record | refit_statistics(fr, out, basis),
        "orthogonality": orthogonality(out.real_prototypes, out.virtual_prototypes),
    }
    log.info("refit W_V in %.0fs: %s", time.time() - t0, out.card["orthogonality"]["v_to_r"])
    return out


def refit_statistics(before: FRModel, after: FRModel, basis: torch.Tensor) -> dict:
    """How much of W_V lies in the face subspace before and after, and where it stood."""
    return {
        "virtual_energy_in_span_before": round(energy_in_span(before.virtual_prototypes, basis), 4),
        "virtual_energy_in_span_after": round(energy_in_span(after.virtual_prototypes, basis), 4),
        "orthogonality_before": before.card.get("orthogonality")
        or orthogonality(before.real_prototypes, before.virtual_prototypes),
    }
