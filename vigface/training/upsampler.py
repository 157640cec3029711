"""Train the cascade's upsampler (:mod:`vigface.generator.upsampler`) on aligned real faces.

Per step: a batch of faces at the output size (box-resized from the 112-px crops, as the DiT's
own data), their low-resolution version by area averaging (what the DiT was trained to draw),
a little Gaussian noise on that input (``cond_noise_max``), the bicubic upsampling ``base``,
and the target residual ``(x_hr - base) / residual_scale``; one random ``crop_size`` window
per face of both; v-prediction MSE on the residual under diffusers' DDPMScheduler. The
identity is the FR prototype of the face's class (the same rows the DiT is conditioned on),
dropped to zeros with ``cond_drop_prob``. EMA weights are what the stage stores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from vigface.config import TrainUpsamplerConfig
from vigface.data import AlignedFaceFolder
from vigface.data.augment import to_model_input
from vigface.fr_model import FRModel
from vigface.generator.diffusion import training_scheduler, v_target
from vigface.generator.upsampler import FaceUpsampler, UpsamplerStage, upsample_input
from vigface.precision import autocast
from vigface.training.dit_data import load_with_prototype_rows
from vigface.training.run import TrainingRun
from vigface.training.schedule import diffusion_step, linear_warmup

log = logging.getLogger(__name__)


def load_pairs(data_dir: Path, cfg: TrainUpsamplerConfig, fr: FRModel, progress: bool):
    """(N, 3, S, S) faces in [-1, 1] at the output size and the FR class row of each."""
    ds = AlignedFaceFolder.scan(data_dir)
    images, rows = load_with_prototype_rows(ds, fr, cfg.model.sample_size, progress)
    return to_model_input(torch.from_numpy(images)), torch.from_numpy(rows)


def low_resolution(hr: torch.Tensor, low_size: int) -> torch.Tensor:
    """Area averaging: box-downsampling, as the DiT's 32-px training faces were made."""
    return F.interpolate(hr, size=(low_size, low_size), mode="area")


def residual_std(hr: torch.Tensor, low_size: int, count: int = 2048) -> float:
    x = hr[:count]
    return float((x - upsample_input(low_resolution(x, low_size), x.shape[-1])).std())


def make_batch(hr, rows, protos, cfg: TrainUpsamplerConfig, scale: float, g: torch.Generator):
    """Residual targets, bases and identities of one random batch of random crops."""
    idx = torch.randint(len(hr), (cfg.batch_size,), generator=g)
    x = hr[idx]
    if cfg.flip:
        flip = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    low = low_resolution(x, cfg.model.low_size)
    sigma = torch.rand(len(idx), 1, 1, 1, generator=g) * cfg.cond_noise_max
    low = (low + sigma * torch.randn(low.shape, generator=g)).clamp(-1, 1)
    base = upsample_input(low, cfg.model.sample_size)
    target = (x - base) / scale
    span = cfg.model.sample_size - cfg.crop_size + 1
    corners = torch.randint(span, (len(idx), 2), generator=g).tolist()
    w = protos[rows[idx]]
    keep = (torch.rand(len(idx), generator=g) >= cfg.cond_drop_prob).float()[:, None]
    return crop(target, corners, cfg.crop_size), crop(base, corners, cfg.crop_size), w * keep


def crop(x: torch.Tensor, corners: list[list[int]], size: int) -> torch.Tensor:
    """One ``size`` window per image at its own (top, left) corner."""
    windows = [im[:, y : y + size, c : c + size] for im, (y, c) in zip(x, corners, strict=True)]
    return torch.stack(windows)


def train_upsampler(
    cfg: TrainUpsamplerConfig,
    data_dir: str | Path,
    fr_dir: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> UpsamplerStage:
    """Train (or resume) and write ``out_dir`` as an upsampler stage folder."""
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    fr = FRModel.load(fr_dir, device="cpu")
    hr, rows = load_pairs(data_dir, cfg, fr, progress)
    protos = F.normalize(fr.real_prototypes.float(), dim=1)
    scale = residual_std(hr, cfg.model.low_size)
    model = FaceUpsampler(
        identity_dim=protos.shape[1], residual_scale=round(scale, 5), **cfg.model.model_dump()
    ).to(device)
    scheduler = training_scheduler(cfg.diffusion.num_train_timesteps, cfg.diffusion.beta_schedule)
    params = list(model.parameters())
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = linear_warmup(opt, cfg.warmup_steps)
    state = {"model": model, "ema": ema, "optimizer": opt, "scheduler": sched}
    run = TrainingRun(out_dir, state, cfg.max_minutes, device=device)
    step = 0
    g = torch.Generator().manual_seed(cfg.seed)
    if (state := run.resume(resume)) is not None:
        g.set_state(state["rng"])
        step = state["step"]

    bar = tqdm(total=cfg.max_steps, initial=step, desc="train-upsampler", disable=not progress)
    running = 0.0
    with run.stop_on_signals():
        while step < cfg.max_steps:
            target, base, w = make_batch(hr, rows, protos, cfg, scale, g)
            target, base, w = target.to(device), base.to(device), w.to(device)
            noise = torch.randn(target.shape, generator=g).to(device)
            t = torch.randint(cfg.diffusion.num_train_timesteps, (len(target),), generator=g).to(
                device
            )
            noisy = scheduler.add_noise(target, noise, t)
            with autocast(device, cfg.precision):
                v = model(noisy, t, w, base).float()
            loss = F.mse_loss(v, v_target(scheduler, target, noise, t))
            diffusion_step(loss, params, opt, sched, ema, cfg.grad_clip)
            step += 1
            bar.update(1)
            running += loss.item()
            run.tick()
            if step % cfg.log_every == 0:
                rec = {"step": step, "v_loss": round(running / cfg.log_every, 5),
                       "lr": sched.get_last_lr()[0]}  # fmt: skip
                running = 0.0
                bar.set_postfix(v=rec["v_loss"])
                run.log(rec)
            out_of_time = run.out_of_time
            if step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps or out_of_time:
                run.checkpoint(rng=g.get_state(), step=step)
            if out_of_time:
                log.info(
                    "stopping at step %d: %s",
                    step,
                    run.stop_signal or f"max_minutes={cfg.max_minutes} reached",
                )
                break
    bar.close()
    ema_model = FaceUpsampler.from_config(model.config)
    ema.copy_to(ema_model.parameters())
    card = upsampler_card(cfg, data_dir, Path(fr_dir), model, step) | run.provenance(cfg.precision)
    stage = UpsamplerStage(model=ema_model.eval(), scheduler=scheduler, card=card)
    stage.save(out_dir)
    return stage


def upsampler_card(cfg, data_dir: Path, fr_dir: Path, model: FaceUpsampler, step: int) -> dict:
    return {
        "kind": "upsampler",
        "train_data": str(data_dir),
        "fr_model": str(fr_dir),
        "low_size": cfg.model.low_size,
        "sample_size": cfg.model.sample_size,
        "residual_scale": model.config.residual_scale,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "steps": step,
        "batch_size": cfg.batch_size,
        "crop_size": cfg.crop_size,
        "config": cfg.model_dump(),
    }
