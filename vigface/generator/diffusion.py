"""v-prediction arithmetic on top of diffusers' schedulers.

Training noises with :class:`diffusers.DDPMScheduler` (``prediction_type="v_prediction"``);
sampling uses ``DPMSolverMultistepScheduler`` (default), ``UniPCMultistepScheduler`` or
``DDIMScheduler`` built from the same config, so the noise schedule of training and
sampling cannot drift apart.

With ``x_t = a x_0 + b eps`` (``a = sqrt(alpha_bar_t)``, ``b = sqrt(1 - alpha_bar_t)``):
``v = a eps - b x_0`` and ``x_0 = a x_t - b v``.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

SCHEDULERS = {
    "dpmsolver": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "ddim": DDIMScheduler,
}


def training_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="v_prediction",
        clip_sample=False,
    )


def sampling_scheduler(train_scheduler, name: str = "dpmsolver"):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    return cls.from_config(train_scheduler.config, prediction_type="v_prediction")


def _coefficients(scheduler, timesteps: torch.Tensor, like: torch.Tensor):
    abar = scheduler.alphas_cumprod.to(like.device)[timesteps].float()
    a = abar.sqrt().view(-1, *([1] * (like.ndim - 1)))
    b = (1 - abar).sqrt().view(-1, *([1] * (like.ndim - 1)))
    return a, b


def v_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """The regression target; equals ``scheduler.get_velocity`` (tested)."""
    a, b = _coefficients(scheduler, timesteps, x0)
    return a * noise - b * x0


def predict_x0(scheduler, x_t: torch.Tensor, v: torch.Tensor, timesteps: torch.Tensor):
    """``x_0 = sqrt(abar) x_t - sqrt(1 - abar) v``: the clean image implied by a predicted v."""
    a, b = _coefficients(scheduler, timesteps, x_t)
    return a * x_t - b * v


def ddim_step(scheduler, x_t: torch.Tensor, v: torch.Tensor, t: int, t_prev: int):
    """Deterministic DDIM (eta = 0) from ``t`` to ``t_prev`` for any pair of timesteps, with the
    noise estimate ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``; equals
    ``DDIMScheduler.step`` on its own grid (tested) but also serves random grids."""
    x0 = predict_x0(scheduler, x_t, v, torch.tensor([t], device=x_t.device))
    a, b = _coefficients(scheduler, torch.tensor([t], device=x_t.device), x_t)
    eps = a * v + b * x_t
    a_prev, b_prev = _coefficients(scheduler, torch.tensor([t_prev], device=x_t.device), x_t)
    return a_prev * x0 + b_prev * eps


def signal_fraction(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_t``: identity-loss weight (x_0 estimates at high noise are blurry means)."""
    return scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_u + g (v_c - v_u)``; g = 1 is the conditional model."""
    return v_uncond + guidance * (v_cond - v_uncond)
