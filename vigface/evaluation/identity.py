"""Does a generator draw the identity it is asked for? Cosines through the FR model.

For a set of prototypes (real rows of W_R or virtual rows of W_V), draw images at several
poses and report the mean cosine between f_FR(image) and the own prototype and, for every
image, its maximum cosine to any real prototype other than its own.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from vigface.generator.artifact import Generator
from vigface.sampling import PAPER_SAMPLER, ImageRequest, Sampler, image_seed


def identity_fidelity(
    gen: Generator,
    group: str,
    identities: int,
    poses: np.ndarray,
    guidance: float,
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 64,
    scheduler: str = "dpmsolver",
    rows: tuple[int, int] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    pose_guidance: float = 1.0,
    timestep_spacing: str = PAPER_SAMPLER.timestep_spacing,
) -> dict:
    """``poses`` is (P, 5, 2): each identity gets one image per pose. The identities are
    spread evenly over the prototype rows ``rows = (first, end)`` (default: all of them)."""
    fr = gen.fr
    protos = fr.virtual_prototypes if group == "virtual" else fr.real_prototypes
    first, end = rows or (0, protos.shape[0])
    if not 0 <= first < end <= protos.shape[0]:
        raise ValueError(f"rows {first}:{end} outside the {protos.shape[0]} {group} prototypes")
    if identities > end - first:
        raise ValueError(f"only {end - first} {group} prototypes in rows {first}:{end}")
    chosen = torch.linspace(first, end - 1, identities).round().long()
    reqs = [
        ImageRequest(protos[int(j)].cpu().numpy(), poses[p], image_seed(seed, int(j), p))
        for j in chosen
        for p in range(len(poses))
    ]
    sampler = Sampler(
        gen.dit,
        gen.scheduler,
        scheduler,
        steps,
        guidance,
        batch_size,
        guidance_interval=guidance_interval,
        pose_guidance=pose_guidance,
        autoencoder=gen.autoencoder,
        timestep_spacing=timestep_spacing,
    )
    t0 = time.perf_counter()
    images = np.concatenate([imgs for _, imgs in sampler.stream(reqs)])
    seconds = time.perf_counter() - t0
    emb = fr.embed(images, flip=False)
    own = F.normalize(protos[chosen].float().cpu(), dim=1).repeat_interleave(len(poses), 0)
    cos_own = (emb * own).sum(1)
    real = F.normalize(fr.real_prototypes.float().cpu(), dim=1)
    sims = emb @ real.T
    if group == "real":
        rows = chosen.repeat_interleave(len(poses))
        sims[torch.arange(len(rows)), rows] = -2  # nearest *other* real identity
    nearest_real = sims.max(1).values
    return {
        "group": group,
        "rows": [first, end],
        "identities": identities,
        "images": len(reqs),
        "guidance": guidance,
        "steps": steps,
        "scheduler": scheduler,
        "timestep_spacing": timestep_spacing,
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "pose_guidance": pose_guidance,
        "sampling_seconds": round(seconds, 3),
        "cos_own_mean": round(float(cos_own.mean()), 4),
        "cos_own_std": round(float(cos_own.std()), 4),
        "cos_nearest_other_real_mean": round(float(nearest_real.mean()), 4),
        "own_beats_nearest_real": round(float((cos_own > nearest_real).float().mean()), 4),
        "cos_own_all": cos_own.tolist(),
        "nearest_real_all": nearest_real.tolist(),
        "images_array": images,
    }
