"""Linear warm-up followed by cosine decay, as a LambdaLR multiplier per optimiser step; and
the one optimiser step the diffusion trainers share."""

from __future__ import annotations

import math

from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_warmup(optimizer, warmup_steps: int):
    """A LambdaLR that ramps the rate linearly over ``warmup_steps`` and holds it after."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)


def diffusion_step(loss, params, opt, lr_schedule, ema, grad_clip: float | None) -> None:
    """Backward, optional gradient clipping, optimiser and LR-schedule step, EMA update: the
    same order for the DiT and the upsampler (``params`` a list: it is walked twice)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    lr_schedule.step()
    ema.step(params)
