"""Diffusion arithmetic on top of diffusers' schedulers, for v- and x-prediction.

Training noises with :class:`diffusers.DDPMScheduler`; sampling uses
``DPMSolverMultistepScheduler`` (default), ``UniPCMultistepScheduler`` or ``DDIMScheduler``
built from the same config, so the noise schedule and the prediction type of training and
sampling cannot drift apart: a generator's ``scheduler/`` folder says what its network
predicts, and nothing else in the sampler needs to know.

With ``x_t = a x_0 + b eps`` (``a = sqrt(alpha_bar_t)``, ``b = sqrt(1 - alpha_bar_t)``):
``v = a eps - b x_0``, ``x_0 = a x_t - b v`` and ``v = (a x_t - x_0) / b``.

* ``v_prediction``: the network outputs ``v`` (the 32-px demo);
* ``sample`` (x-prediction, JiT: Li & He 2025): the network outputs the clean image. On large
  pixel patches (14 px at 112 px) the clean image lies on a low-dimensional manifold a small
  transformer can reach, where noise-like targets cannot be. The loss is still taken on
  ``v`` (JiT's choice), with ``b`` clamped from below so that the lowest-noise steps do not
  dominate it.

``resolution_shift`` k moves the schedule's log-SNR by ``-2 log k`` (simple diffusion,
Hoogeboom et al. 2023): at 112 px neighbouring pixels share more of the signal, so the same
noise level hides less; k = 112/64 puts the 112-px schedule where the cosine one is at 64 px.
"""

from __future__ import annotations

import math

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


PREDICTION_TYPES = ("v_prediction", "sample")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
# x-prediction's v-loss divides by b = sqrt(1 - alpha_bar); JiT clamps 1 - t at 0.05
MIN_NOISE_STD = 0.05


def shifted_cosine_betas(num_train_timesteps: int, shift: float) -> list[float]:
    """Betas of the cosine schedule (``squaredcos_cap_v2``) with its log-SNR moved by
    ``-2 log shift``; ``shift = 1`` gives diffusers' own betas back (tested)."""
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    abar = torch.cos((t + 0.008) / 1.008 * torch.pi / 2) ** 2
    abar = abar.clamp(1e-12, 1 - 1e-12)
    logit = torch.log(abar) - torch.log1p(-abar) - 2 * math.log(shift)
    shifted = torch.sigmoid(logit)
    if shift == 1.0:
        shifted = abar
    betas = (1 - shifted[1:] / shifted[:-1]).clamp(max=0.999)
    return betas.tolist()


def training_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "v_prediction",
    resolution_shift: float = 1.0,
):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
    extra = {}
    if resolution_shift != 1.0:
        if beta_schedule != "squaredcos_cap_v2":
            raise ValueError("resolution_shift applies to the squaredcos_cap_v2 schedule only")
        extra["trained_betas"] = shifted_cosine_betas(num_train_timesteps, resolution_shift)
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
        **extra,
    )


def sampling_scheduler(train_scheduler, name: str = "dpmsolver", timestep_spacing=None):
    """The solver ``name`` on the training schedule, predicting what the network predicts.

    ``timestep_spacing="trailing"`` puts the first step at t = T, where training put pure noise
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"). The
    schedulers the models were saved with say ``leading`` (DDPMScheduler's default), which
    starts at ``T - T / steps`` (t = 900 of 1,000 with 10 steps), where the cosine schedule
    still holds 15 % signal, so the first step reads pure noise as a face's average colour.
    ``None`` keeps what the training scheduler says."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    spacing = {}
    if timestep_spacing is not None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, not {timestep_spacing!r}"
            )
        spacing["timestep_spacing"] = timestep_spacing
    cls = SCHEDULERS[name]
    return cls.from_config(
        train_scheduler.config, prediction_type=prediction_type(train_scheduler), **spacing
    )


def prediction_type(scheduler) -> str:
    return scheduler.config.get("prediction_type", "v_prediction")


def _coefficients(scheduler, timesteps: torch.Tensor, like: torch.Tensor):
    abar = scheduler.alphas_cumprod.to(like.device)[timesteps].float()
    a = abar.sqrt().view(-1, *([1] * (like.ndim - 1)))
    b = (1 - abar).sqrt().view(-1, *([1] * (like.ndim - 1)))
    return a, b


def v_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """The regression target; equals ``scheduler.get_velocity`` (tested)."""
    a, b = _coefficients(scheduler, timesteps, x0)
    return a * noise - b * x0


def predict_x0(scheduler, x_t: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor):
    """The clean image implied by the network's output: ``output`` itself under
    x-prediction, ``sqrt(abar) x_t - sqrt(1 - abar) v`` under v-prediction."""
    if prediction_type(scheduler) == "sample":
        return output
    a, b = _coefficients(scheduler, timesteps, x_t)
    return a * x_t - b * output


def to_velocity(
    scheduler,
    x_t: torch.Tensor,
    output: torch.Tensor,
    timesteps: torch.Tensor,
    min_noise_std: float = 0.0,
):
    """The velocity implied by the network's output, ``(a x_t - x_0) / b`` under
    x-prediction (``b`` at least ``min_noise_std``: the training loss's clamp)."""
    if prediction_type(scheduler) == "v_prediction":
        return output
    a, b = _coefficients(scheduler, timesteps, x_t)
    return (a * x_t - output) / b.clamp(min=min_noise_std)


def velocity_loss_target(scheduler, x_t, x0, noise, timesteps):
    """What the training loss compares the network's velocity with: the true ``v``, or for
    x-prediction ``(a x_t - x_0) / max(b, MIN_NOISE_STD)`` so that the clamp cancels (the
    loss is then ``|x0_hat - x0|^2 / max(b, 0.05)^2``, JiT's v-loss)."""
    if prediction_type(scheduler) == "v_prediction":
        return v_target(scheduler, x0, noise, timesteps)
    return to_velocity(scheduler, x_t, x0, timesteps, MIN_NOISE_STD)


def ddim_step(scheduler, x_t: torch.Tensor, v: torch.Tensor, t: int, t_prev: int):
    """Deterministic DDIM (eta = 0) from ``t`` to ``t_prev`` for any pair of timesteps, with the
    noise estimate ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``; equals
    ``DDIMScheduler.step`` on its own grid (tested) but also serves random grids. ``v`` is
    the network's output (converted to a velocity under x-prediction)."""
    tt = torch.tensor([t], device=x_t.device)
    x0 = predict_x0(scheduler, x_t, v, tt)
    v = to_velocity(scheduler, x_t, v, tt.expand(len(x_t)))
    a, b = _coefficients(scheduler, torch.tensor([t], device=x_t.device), x_t)
    eps = a * v + b * x_t
    a_prev, b_prev = _coefficients(scheduler, torch.tensor([t_prev], device=x_t.device), x_t)
    return a_prev * x0 + b_prev * eps


def signal_fraction(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_t``: identity-loss weight (x_0 estimates at high noise are blurry means)."""
    return scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_u + g (v_c - v_u)``; g = 1 is the conditional model.
    Valid for ``v`` and for ``x_0`` outputs alike: at a given ``x_t`` one is an affine
    function of the other, so guiding either gives the same step."""
    return v_uncond + guidance * (v_cond - v_uncond)


def two_condition_cfg(
    both: torch.Tensor,
    pose_only: torch.Tensor,
    neither: torch.Tensor,
    guidance: float,
    pose_guidance: float | torch.Tensor,
) -> torch.Tensor:
    """Guidance with separate weights for two conditions (InstructPix2Pix, Brooks et al.
    2023): ``u + g_p (u_p - u) + g (u_pw - u_p)`` with ``u`` neither condition, ``u_p`` the
    pose alone and ``u_pw`` pose and identity. ``g_p = 1`` is :func:`cfg_combine`. ``g_p``
    may be a tensor broadcasting against the outputs (one weight per image)."""
    return neither + pose_guidance * (pose_only - neither) + guidance * (both - pose_only)
