"""Stage 2: train the landmark-conditioned FaceDiT against a frozen stage-1 FR model.

The objective is :mod:`vigface.training.dit_loss`, the data :mod:`vigface.training.dit_data`;
this file runs the loop: a seeded epoch order (pose-balanced draws where asked), AdamW with
warm-up, gradient clipping, EMA weights (diffusers ``EMAModel``, what the artifact stores and
the sampler uses), checkpoints that resume bit for bit, ``max_minutes`` for time-boxed legs,
``init_from`` for warm starts, DDP under torchrun.

A latent generator (``autoencoder:`` in the config) trains on the autoencoder's latents and
carries the autoencoder in its entry; the identity term decodes its clean estimate first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vigface.config import TrainDiTConfig
from vigface.data import DatasetError
from vigface.fr_model import FRModel
from vigface.generator.artifact import Generator
from vigface.generator.autoencoder import LatentDecoder, load_autoencoder
from vigface.generator.diffusion import training_scheduler
from vigface.generator.dit import FaceDiT
from vigface.precision import autocast
from vigface.training.distributed import barrier, cleanup, init_distributed
from vigface.training.dit_data import (
    FaceSet,
    epoch_order,
    load_face_set,
    pose_balance_weights,
    trainable_virtual_prototypes,
)
from vigface.training.dit_loss import DiTLoss, spatially_normalised
from vigface.training.run import TrainingRun
from vigface.training.schedule import diffusion_step, linear_warmup

log = logging.getLogger(__name__)


# what may differ between a warm start and its source: the pixel side of the transformer
# (patch embedding and output projection are then trained afresh; the blocks carry over)
PIXEL_SIDE_KEYS = {"sample_size", "patch_size", "patch_bottleneck", "in_channels"}
# layers a warm start may add: they start as their zero-initialised "no effect" state
ADDED_LAYER_KEYS = {"pose_embedding"}


def warm_start(dit: FaceDiT, generator_dir: Path) -> list[str]:
    """Copy the DiT weights of a saved generator into ``dit``; returns the tensors that stay
    freshly initialised. The transformer (width, depth, heads) must match; the image side,
    patch and bottleneck may differ, so a 112-px model on 14-px patches (8 x 8 tokens)
    starts from the 32-px one on 4-px patches (8 x 8 tokens too) with only its pixel layers
    new. Layers the source lacks (``pose_embedding``) start fresh too."""
    if not (generator_dir / "dit").is_dir():
        raise DatasetError(f"init_from: {generator_dir} has no dit/ folder (not a generator)")
    src = FaceDiT.from_pretrained(generator_dir / "dit", low_cpu_mem_usage=False)
    mine = {k: v for k, v in dit.config.items() if not k.startswith("_")}
    theirs = {k: v for k, v in src.config.items() if not k.startswith("_")}
    may_differ = PIXEL_SIDE_KEYS | ADDED_LAYER_KEYS
    diff = sorted(k for k in mine if mine.get(k) != theirs.get(k) and k not in may_differ)
    if diff:
        raise DatasetError(f"init_from: {generator_dir} has a different DiT ({', '.join(diff)})")
    own = dit.state_dict()
    take = {
        k: v.float() for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape
    }
    dit.load_state_dict(take, strict=False)
    fresh = sorted(k for k in own if k not in take)
    log.info("initialised the DiT from %s (%d tensors new: %s)", generator_dir, len(fresh), fresh)
    return fresh


def generator_card(
    cfg: TrainDiTConfig, data_dir: Path, fr_dir: Path, fr: FRModel, dit: FaceDiT, step: int
) -> dict:
    """The card fields a trained generator carries: what it was trained on and how. One place,
    so a snapshot of a run (experiments/dit_snapshot.py) says the same as the run's end."""
    return {
        "kind": "generator",
        "train_data": str(data_dir),
        "fr_model": str(fr_dir),
        "num_real": int(fr.real_prototypes.shape[0]),
        "num_virtual": int(fr.virtual_prototypes.shape[0]),
        "virtual_identity_fraction": cfg.virtual_identity_fraction,
        "virtual_identity_holdout": cfg.virtual_identity_holdout,
        "init_from": cfg.init_from,
        "sample_size": cfg.model.sample_size,
        "prediction_type": cfg.diffusion.prediction_type,
        "pose_drop_prob": cfg.pose_drop_prob,
        "pose_balance": cfg.pose_balance,
        "latent": cfg.autoencoder is not None,
        "pose_embedding": cfg.model.pose_embedding,
        "dit_parameters": int(sum(p.numel() for p in dit.parameters())),
        "steps": int(step),
        "batch_size": cfg.batch_size,
        "fr_card": fr.card,
    }


def plot_losses(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():  # stopped before the first log line
        return
    recs = [json.loads(line) for line in log_path.read_text().splitlines() if '"v_loss"' in line]
    if not recs:
        return
    steps = [r["step"] for r in recs]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [r["v_loss"] for r in recs])
    ax[0].set(title="v-prediction MSE", xlabel="step", yscale="log")
    ax[1].plot(steps, [r.get("id_loss", 0) for r in recs], color="tab:orange", label="real")
    if any(r.get("virtual_id_loss") for r in recs):
        ax[1].plot(steps, [r.get("virtual_id_loss", 0) for r in recs], label="virtual")
        ax[1].legend()
    ax[1].set(title="identity loss (weighted)", xlabel="step")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


@dataclass
class Setup:
    """Everything one training run holds: data, models, optimiser state and its bookkeeping."""

    cfg: TrainDiTConfig
    ctx: object
    fr: FRModel
    faces: FaceSet
    protos: torch.Tensor
    dit: FaceDiT
    scheduler: object
    loss: DiTLoss
    params: list
    ema: EMAModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    run: TrainingRun
    vae: AutoencoderKL | None = None


def setup(cfg: TrainDiTConfig, data_dir: Path, fr_dir: Path, out_dir: Path, device, progress):
    ctx = init_distributed(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + ctx.rank)
    fr = FRModel.load(fr_dir, device=ctx.device)
    vae = load_autoencoder(Path(cfg.autoencoder), ctx.device) if cfg.autoencoder else None
    faces = load_face_set(cfg, data_dir, fr, out_dir, vae, progress and ctx.is_main)
    protos = F.normalize(fr.real_prototypes.float(), dim=1).to(ctx.device)
    channels = vae.config.latent_channels if vae is not None else 3
    dit = FaceDiT(identity_dim=protos.shape[1], in_channels=channels, **cfg.model.model_dump())
    dit = dit.to(ctx.device)
    if cfg.init_from:
        warm_start(dit, Path(cfg.init_from))
    scheduler = training_scheduler(**cfg.diffusion.model_dump())
    decoder = LatentDecoder(vae) if vae is not None else None
    repa_channels = fr.backbone.layer3[-1].conv2.out_channels if cfg.repa_weight > 0 else None
    loss = DiTLoss(dit, fr.embedder, scheduler, cfg, protos, decoder, repa_channels)
    loss = loss.to(ctx.device)
    params = [p for p in loss.parameters() if p.requires_grad]
    ema = EMAModel(list(dit.parameters()), decay=cfg.ema_decay, use_ema_warmup=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = linear_warmup(opt, cfg.warmup_steps)
    state = {"dit": dit, "ema": ema, "optimizer": opt, "scheduler": sched}
    if loss.projector is not None:
        state["projector"] = loss.projector
    run = TrainingRun(out_dir, state, cfg.max_minutes, is_main=ctx.is_main, device=ctx.device)
    return Setup(cfg, ctx, fr, faces, protos, dit, scheduler, loss, params, ema, opt, sched,
                 run, vae)  # fmt: skip


def pixel_repa_targets(fr: FRModel, x0: torch.Tensor) -> torch.Tensor:
    """The FR backbone's stage-3 feature maps of clean pixel faces (latent sets keep them)."""
    side = fr.backbone.input_size
    with torch.no_grad():
        small = F.interpolate(x0, size=(side, side), mode="area")
        return spatially_normalised(fr.backbone.feature_maps(small)[-1])


class EMAOfDiT:
    """``EMAModel`` tracks the DiT's parameters only; the projector trains beside it."""

    def __init__(self, ema: EMAModel, dit: FaceDiT):
        self.ema, self.dit = ema, dit

    def step(self, _params) -> None:
        self.ema.step(self.dit.parameters())


def train_steps(s: Setup, step: int, total: int, progress: bool) -> int:
    """Train from ``step`` until ``total`` steps or the time box; returns the step reached."""
    cfg, ctx, faces = s.cfg, s.ctx, s.faces
    model = DDP(s.loss, find_unused_parameters=False) if ctx.enabled else s.loss
    weights = pose_balance_weights(faces.landmarks.numpy(), cfg.pose_balance)
    weights = weights if cfg.pose_balance else None
    virtual = trainable_virtual_prototypes(s.fr, cfg)
    virtual = virtual.to(ctx.device) if virtual is not None else None
    steps_per_epoch = len(faces) // (cfg.batch_size * ctx.world_size)
    ema = EMAOfDiT(s.ema, s.dit)
    bar = tqdm(total=total, initial=step, desc="train-dit", disable=not (progress and ctx.is_main))
    sums: dict[str, float] = {}
    while step < total:
        epoch = step // steps_per_epoch
        perm = epoch_order(len(faces), cfg.seed + epoch, weights)[ctx.rank :: ctx.world_size]
        for i in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            flip = torch.rand(len(idx)) < 0.5 if cfg.flip else None
            x0, heat, rows, repa = faces.batch(idx, flip, ctx.device)
            if cfg.repa_weight > 0 and repa is None:
                repa = pixel_repa_targets(s.fr, x0)
            with autocast(ctx.device, cfg.precision):
                loss, terms = model(x0, heat, s.protos[rows.to(ctx.device)], virtual, repa)
            diffusion_step(loss, s.params, s.opt, s.sched, ema, cfg.grad_clip)
            step += 1
            bar.update(1)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            s.run.tick()
            if ctx.is_main and step % cfg.log_every == 0:
                rec = {k: round(v / cfg.log_every, 5) for k, v in sums.items()}
                rec = {"step": step, "epoch": epoch + 1, **rec, "lr": s.sched.get_last_lr()[0]}
                sums = {}
                bar.set_postfix(v=rec["v_loss"], id=rec.get("id_loss", 0))
                s.run.log(rec)
            out_of_time = s.run.out_of_time
            if ctx.enabled and cfg.max_minutes is not None:  # all ranks stop at the same step
                flag = torch.tensor(float(out_of_time), device=ctx.device)
                torch.distributed.all_reduce(flag)
                out_of_time = bool(flag > 0)
            if step % cfg.checkpoint_every_steps == 0 or step == total or out_of_time:
                checkpoint(s, step)
            if out_of_time:
                log.info(
                    "stopping at step %d: %s",
                    step,
                    s.run.stop_signal or f"max_minutes={cfg.max_minutes} reached",
                )
                bar.close()
                return step
            if step >= total:
                break
    bar.close()
    return step


def checkpoint(s: Setup, step: int) -> None:
    s.run.checkpoint(step=step)
    if s.ctx.is_main:
        plot_losses(s.run.log_path, s.run.out_dir / "loss_curve.png")


def save_generator(s: Setup, data_dir: Path, fr_dir: Path, out_dir: Path, step: int):
    ema_dit = FaceDiT.from_config(s.dit.config)
    s.ema.copy_to(ema_dit.parameters())
    ema_dit.eval()
    card = {
        **generator_card(s.cfg, data_dir, fr_dir, s.fr, s.dit, step),
        "batch_size": s.cfg.batch_size * s.ctx.world_size,
        **s.run.provenance(s.cfg.precision),
    }
    if s.vae is not None:
        card["autoencoder"] = json.loads((Path(s.cfg.autoencoder) / "card.json").read_text())
    result = Generator(
        dit=ema_dit,
        scheduler=s.scheduler,
        fr=s.fr,
        card=card,
        pose_landmarks=s.faces.landmarks.numpy(),
        autoencoder=s.vae,
    )
    (out_dir / "train_config.json").write_text(s.cfg.model_dump_json(indent=2))
    result.save(out_dir)
    return result


def train_dit(
    cfg: TrainDiTConfig,
    data_dir: str | Path,
    fr_dir: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> Generator | None:
    """Train (or continue) a generator in ``out_dir``; returns it on the main process."""
    out_dir, data_dir, fr_dir = Path(out_dir), Path(data_dir), Path(fr_dir)
    s = setup(cfg, data_dir, fr_dir, out_dir, device, progress)
    steps_per_epoch = len(s.faces) // (cfg.batch_size * s.ctx.world_size)
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(s.faces)} images are fewer than one batch of {cfg.batch_size}")
    step = (s.run.resume(resume) or {}).get("step", 0)
    with s.run.stop_on_signals():
        step = train_steps(s, step, steps_per_epoch * cfg.epochs, progress)
    barrier(s.ctx)
    result = save_generator(s, data_dir, fr_dir, out_dir, step) if s.ctx.is_main else None
    cleanup(s.ctx)
    return result
