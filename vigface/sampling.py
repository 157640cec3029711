"""Batched classifier-free-guidance sampling: the one sampler the CLI, benchmarks and workers use.

Per denoising step, the conditional and unconditional halves (``w`` and ``w = 0``) run in a
single forward pass of ``2B`` and are combined as ``v_u + g (v_c - v_u)``. With a pose weight
``g_p != 1`` (two-condition guidance, for models trained with landmark dropout) a third part
without landmarks joins the same forward (``3B``):
``u + g_p (u_p - u) + g (u_pw - u_p)``. The network's output may be ``v`` or the clean image
(x-prediction): guidance is the same affine combination for both, and the solver is built
with the generator's own prediction type, so this file does not branch on it. With a guidance
interval (Kynkaenniemi et al., NeurIPS 2024: guidance helps only in the middle of the noise
range) the two halves run only for timesteps ``t / T`` inside ``[lo, hi]``; elsewhere the
conditional branch runs alone, a forward of ``B`` (``g = 1``). The landmarks' part of the
forward is encoded once per batch (:meth:`FaceDiT.encode_pose`), not at every step. Requests
are streamed in batches, so memory stays flat however many images are asked for.

With an upsampler (the cascade's second stage, :mod:`vigface.generator.upsampler`) each batch's
32-px faces are then upsampled, conditioned on the same prototypes, with the residual's
starting noise seeded from the image's seed as well.

Determinism: an image's starting noise comes from its own CPU generator seeded by
:func:`image_seed` (job seed, identity index, image index), and the sampling schedulers are
deterministic and act per sample. So an image depends only on (model, seeds, pose, g, steps)
and not on which batch it lands in; a re-run of a shard with the same batches reproduces the
same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vigface.cpu_memory import keep_freed_memory
from vigface.generator.autoencoder import decode, latent_factor
from vigface.generator.diffusion import cfg_combine, sampling_scheduler, two_condition_cfg
from vigface.generator.landmarks import render_heatmaps
from vigface.pose import is_turned
from vigface.precision import autocast, autocast_dtype

# how faces are drawn; defined apart so that the API process reads it without torch
from vigface.sampler_settings import (  # noqa: F401
    PAPER_SAMPLER,
    SamplerSettings,
    check_guidance_interval,
)


class SamplingInterrupted(RuntimeError):
    """The sampler's ``interrupt`` was set: the batch under way was abandoned."""


def image_seed(job_seed: int, identity_index: int, image_index: int, attempt: int = 0) -> int:
    """A 63-bit seed that is a pure function of its arguments (stable across processes)."""
    key = f"{job_seed}:{identity_index}:{image_index}:{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class ImageRequest:
    """One image to draw: prototype (D,), 5 landmarks (5, 2) in 112-px crop pixels, seed,
    and optionally the identity to guide away from (NegFaceDiff's negative condition)."""

    identity: np.ndarray
    landmarks: np.ndarray
    seed: int
    negative: np.ndarray | None = None


def initial_noise(seed: int, size: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(channels, size, size, generator=g)


def upsampler_seed(seed: int) -> int:
    """The upsampler's noise seed for an image: independent of the DiT's stream."""
    return image_seed(seed, -1, -1, 0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] -> (B, S, S, 3) uint8 RGB."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


DECODE_CHUNK = 8  # latents decoded at a time


def decode_latents(vae, z: torch.Tensor, device, precision: str) -> torch.Tensor:
    """A batch of the generator's latents -> fp32 images in [-1, 1] (not clamped). The decoder
    is about 40 % of a draw on a CPU; channels-last memory and chunks of
    :data:`DECODE_CHUNK` (whose 112-px activations stay in cache) decode 1.5x faster there
    than one contiguous batch of 32 (``python bench/sampler.py --model latent112
    --decoder-formats``); a GPU decodes the batch at once. ``vae`` must be channels-last."""
    out = []
    chunk = DECODE_CHUNK if torch.device(device).type == "cpu" else len(z)
    with autocast(device, precision):
        for part in z.split(chunk):
            out.append(decode(vae, part.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out).contiguous()


def compile_for_inference(dit):
    """``torch.compile`` with inductor's ``freezing``: weights become graph constants, which
    lets inductor prepack them for oneDNN on CPU and fuse the adaLN/GELU/residual elementwise
    chains around the GEMMs (``bench/sampler.py`` times eager against compiled in one run).
    Only valid under ``inference_mode``, which the sampler uses."""
    return torch.compile(dit, options={"freezing": True})


class Sampler:
    """Draws face images from a :class:`vigface.generator.artifact.Generator`'s DiT.

    Args:
        dit: the FaceDiT (eval mode).
        train_scheduler: the DDPMScheduler it was trained with.
        scheduler: ``"dpmsolver"`` (DPMSolverMultistepScheduler, default) or ``"ddim"``.
        steps: denoising steps. guidance: CFG weight g (default: :data:`PAPER_SAMPLER`).
        guidance_interval: ``(lo, hi)`` in ``t / T`` (1 = pure noise): apply CFG only there,
            the conditional branch alone elsewhere; ``None`` = CFG at every step.
        batch_size: images per forward (the forward itself is 2x that).
        compile: run the DiT through :func:`compile_for_inference` (same images up to float
            rounding; a shard is only byte-reproducible under the same setting).
        precision: ``"auto"`` (bf16 autocast on CUDA and on CPUs with native bf16, fp32
            elsewhere), ``"fp32"`` or ``"bf16"``; see :mod:`vigface.precision`.
        pose_guidance: g_p, the landmarks' own weight (1: one-condition CFG as in the paper).
        turned_pose_guidance: g_p of the images whose landmarks ask for |yaw| 35 degrees or
            more (:func:`vigface.pose.is_turned`); ``None``: ``pose_guidance`` for all.
        timestep_spacing: ``"trailing"`` (the first step at ``T``), ``"leading"`` (the first
            at ``T - T / steps``, what the models' saved schedulers say) or ``"linspace"``; see
            :func:`vigface.generator.diffusion.sampling_scheduler`.
        upsampler: an :class:`~vigface.generator.upsampler.UpsamplerStage` run after the DiT
            (``None``: the DiT's own resolution); ``upsample_steps`` its solver steps.
        autoencoder: a latent generator's autoencoder; the DiT then draws latents, decoded
            once per batch at the end.
    """

    def __init__(
        self,
        dit,
        train_scheduler,
        scheduler: str = PAPER_SAMPLER.scheduler,
        steps: int = PAPER_SAMPLER.steps,
        guidance: float = PAPER_SAMPLER.guidance,
        batch_size: int = 32,
        compile: bool = False,
        precision: str = "auto",
        guidance_interval: tuple[float, float] | None = None,
        upsampler=None,
        upsample_steps: int = 8,
        pose_guidance: float = PAPER_SAMPLER.pose_guidance,
        autoencoder=None,
        turned_pose_guidance: float | None = None,
        timestep_spacing: str = PAPER_SAMPLER.timestep_spacing,
    ):
        self.guidance_interval = check_guidance_interval(guidance_interval)
        self.dit = dit.eval()
        self.device = next(dit.parameters()).device
        self.train_scheduler = train_scheduler
        self.scheduler_name, self.steps, self.guidance = scheduler, steps, guidance
        self.pose_guidance, self.turned_pose_guidance = pose_guidance, turned_pose_guidance
        self.batch_size = batch_size
        self.size = dit.config.sample_size
        self.upsampler, self.upsample_steps = upsampler, upsample_steps
        if upsampler is not None and upsampler.low_size != self.size:
            raise ValueError(
                f"the upsampler takes {upsampler.low_size}-px faces, the DiT draws {self.size}"
            )
        self.autoencoder, self.channels = autoencoder, dit.config.in_channels
        self.output_size = upsampler.size if upsampler is not None else self.size
        if autoencoder is not None:
            self.output_size = self.size * latent_factor(autoencoder)
            autoencoder.to(memory_format=torch.channels_last)  # see decode_latents
        if self.device.type == "cpu":
            keep_freed_memory()  # batches reuse their buffers instead of faulting them in
        self.precision = precision
        self.dtype = autocast_dtype(precision, self.device)
        self.forward = compile_for_inference(dit) if compile else dit
        self.interrupt = None  # an Event: when set, the batch under way stops at its next step
        self.timestep_spacing = timestep_spacing
        self._solver()  # validate the name and the spacing early

    def _solver(self):
        """A fresh solver (multistep solvers keep state between steps: one per batch)."""
        return sampling_scheduler(self.train_scheduler, self.scheduler_name, self.timestep_spacing)

    @classmethod
    def for_generator(cls, gen, settings, batch_size: int = 32, **kw) -> Sampler:
        """The sampler a generator draws with under ``settings`` (a SamplerSettings, or any
        model holding its fields: a resolved order)."""
        up = gen.upsampler if settings.upsample else None
        upsample_steps = int((gen.upsampler.card if gen.upsampler else {}).get("sampling_steps", 8))
        return cls(
            gen.dit,
            gen.scheduler,
            settings.scheduler,
            settings.steps,
            settings.guidance,
            batch_size,
            guidance_interval=settings.guidance_interval,
            pose_guidance=settings.pose_guidance,
            turned_pose_guidance=getattr(settings, "turned_pose_guidance", None),
            timestep_spacing=settings.timestep_spacing,
            upsampler=up,
            upsample_steps=upsample_steps,
            autoencoder=gen.autoencoder,
            **kw,
        )

    @torch.inference_mode()
    def sample(
        self,
        identities: torch.Tensor,
        landmarks: torch.Tensor,
        seeds: list[int],
        negatives: torch.Tensor | None = None,
    ) -> np.ndarray:
        """One batch: identities (B, D), landmarks (B, 5, 2) -> (B, S, S, 3) uint8 (S: the
        output size, the upsampler's when there is one). ``negatives`` (B, D): the condition
        of the guided forward's second part in place of the null one (NegFaceDiff: guidance
        then pushes each face away from those identities as well)."""
        b = len(seeds)
        sched = self._solver()
        sched.set_timesteps(self.steps, device=self.device)
        x = torch.stack([initial_noise(s, self.size, self.channels) for s in seeds])
        x = x.to(self.device)
        x = x * sched.init_noise_sigma
        w = F.normalize(identities.float().to(self.device), dim=1)
        heat = render_heatmaps(landmarks.to(self.device), self.size)
        gp = self.pose_guidances(landmarks)
        pushed = torch.nonzero(gp != 1.0).flatten()  # the images that need the pose-free part
        # a guided forward: (w, pose) and (0, pose) for every image, (0, no pose) for the pushed
        zero = torch.zeros_like(w)
        away = zero if negatives is None else F.normalize(negatives.float(), dim=1).to(zero)
        cond = torch.cat([w, away, zero[pushed]])
        heat_parts = torch.cat([heat, heat, torch.zeros_like(heat[pushed])])
        # the landmarks' part of every forward does not change between steps: encode it once
        pose_parts = self.dit.encode_pose(heat_parts)
        pose = pose_parts.head(b)
        total = self.train_scheduler.config.num_train_timesteps
        for t in sched.timesteps:
            if self.interrupt is not None and self.interrupt.is_set():
                raise SamplingInterrupted("stopped inside a sampling batch")
            if self.guided(float(t) / total, len(pushed) > 0):
                x_in = sched.scale_model_input(torch.cat([x, x, x[pushed]]), t)
                tt = t.expand(len(x_in)).to(self.device)
                with autocast(self.device, self.precision):
                    v = self.forward(x_in, tt, cond, pose_parts).float()
                both, pose_only = v[:b], v[b : 2 * b]
                guided = cfg_combine(both, pose_only, self.guidance)
                if len(pushed):  # rows at g_p = 1 keep cfg_combine's exact arithmetic
                    guided[pushed] = two_condition_cfg(
                        both[pushed], pose_only[pushed], v[2 * b :], self.guidance,
                        gp[pushed].view(-1, 1, 1, 1),
                    )  # fmt: skip
                v = guided
            else:  # the conditional branch alone: half the work
                x_in = sched.scale_model_input(x, t)
                with autocast(self.device, self.precision):
                    v = self.forward(x_in, t.expand(b).to(self.device), cond[:b], pose).float()
            x = sched.step(v, t, x).prev_sample
        if self.autoencoder is not None:  # a latent generator: decoded once, at the end
            x = decode_latents(self.autoencoder, x, self.device, self.precision)
        if self.upsampler is not None:
            noise = torch.stack([initial_noise(upsampler_seed(s), self.output_size) for s in seeds])
            x = self.upsampler.upsample(
                x.clamp(-1, 1), w, noise, self.upsample_steps, self.scheduler_name, self.precision
            )
        return to_uint8(x)

    def pose_guidances(self, landmarks: torch.Tensor) -> torch.Tensor:
        """(B,) g_p of each image of a batch: ``turned_pose_guidance`` where its landmarks
        ask for a turned face, ``pose_guidance`` elsewhere."""
        gp = torch.full((len(landmarks),), float(self.pose_guidance), device=self.device)
        if self.turned_pose_guidance is not None:
            turned = torch.from_numpy(is_turned(landmarks.cpu().numpy())).to(self.device)
            gp[turned] = float(self.turned_pose_guidance)
        return gp

    def pushes_pose(self) -> bool:
        """Can a batch need the third, pose-free forward part?"""
        return self.pose_guidance != 1.0 or self.turned_pose_guidance not in (None, 1.0)

    def guided(self, t_frac: float, pushed: bool | None = None) -> bool:
        """Does CFG apply at this point ``t / T`` of the noise range? ``pushed``: whether the
        batch has an image at g_p != 1 (default: whether any image could)."""
        pushed = self.pushes_pose() if pushed is None else pushed
        if self.guidance == 1.0 and not pushed:
            return False  # v_u + 1 (v_c - v_u) = v_c: the unconditional half is wasted work
        if self.guidance_interval is None:
            return True
        lo, hi = self.guidance_interval
        return lo <= t_frac <= hi

    def forwards_per_image(self) -> float:
        """DiT evaluations per image (a guided step costs two, three with pose guidance):
        the sampler's work unit; with ``turned_pose_guidance`` the most a batch can cost."""
        sched = self._solver()
        sched.set_timesteps(self.steps)
        total = self.train_scheduler.config.num_train_timesteps
        parts = 3 if self.pushes_pose() else 2
        return float(sum(parts if self.guided(float(t) / total) else 1 for t in sched.timesteps))

    def stream(
        self, requests: Iterable[ImageRequest]
    ) -> Iterator[tuple[list[ImageRequest], np.ndarray]]:
        """Yield ``(requests, images)`` batch by batch, in request order."""
        batch: list[ImageRequest] = []
        for req in requests:
            batch.append(req)
            if len(batch) == self.batch_size:
                yield batch, self._run(batch)
                batch = []
        if batch:
            yield batch, self._run(batch)

    def _run(self, batch: list[ImageRequest]) -> np.ndarray:
        ids = torch.from_numpy(np.stack([np.asarray(r.identity, np.float32) for r in batch]))
        lms = torch.from_numpy(np.stack([np.asarray(r.landmarks, np.float32) for r in batch]))
        neg = None
        if any(r.negative is not None for r in batch):
            neg = torch.from_numpy(
                np.stack([
                    np.zeros_like(ids[0].numpy()) if r.negative is None else
                    np.asarray(r.negative, np.float32) for r in batch
                ])
            )  # fmt: skip
        return self.sample(ids, lms, [r.seed for r in batch], negatives=neg)
