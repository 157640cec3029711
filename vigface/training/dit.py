"""Stage 2: train the landmark-conditioned FaceDiT against a frozen stage-1 FR model.

Loss per sample (v-prediction, DDPMScheduler noising):

    L = |v_hat - v|^2  +  lambda * omega_t * 1[alpha_bar_t >= a_min] * |f(x0_hat)/|f| - w/|w||^2

* ``w`` is the FR prototype of the image's identity (a row of W_R), replaced by zeros with
  probability ``cond_drop_prob`` (0.1) to learn the unconditional branch for CFG;
* ``x0_hat = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v_hat`` goes through the frozen FR
  backbone (gradients flow to the DiT only);
* ``lambda`` is ``identity_loss_weight``; ``omega_t`` is ``alpha_bar_t``
  (``identity_loss_weighting: alpha_bar``, the paper-like default: it fades the term out
  towards high noise, where ``x0_hat`` is a blurry mean) or 1 (``uniform``: the identity must
  already be decided in the one-step estimate at high noise, which is where sampling fixes
  it); below ``a_min = identity_loss_min_alpha_bar`` it is not computed at all; dropped
  samples (w = 0) get no identity term. The sum is divided by the number of conditioned
  samples in the batch.

Margin term (``identity_margin_weight`` > 0; an extension for distinct identities): for
the same conditioned samples, ``omega_t * relu(m + max_{j != y} cos(f, w_j) - cos(f, w_y))``
over every real prototype ``w_j`` (``identity_margin``): the squared distance alone is met
by a face that is as close to its neighbours as to its own prototype; this one asks for a
face nearer its own identity than any other by a margin. ``identity_augment`` flips and
shifts ``x0_hat`` before the FR model so that a pixel pattern only one alignment of the FR
responds to satisfies neither term.

Virtual-prototype term (``virtual_identity_fraction`` > 0; an extension, off in the GPU
configs): besides the batch, ``fraction * B`` random rows of W_V are rendered from pure noise
with a short DDIM unroll (``virtual_identity_steps`` steps on a random grid,
poses taken from the batch), gradients through every step as in DRaFT (Clark et al., 2023),
with classifier-free guidance ``virtual_identity_guidance`` as the sampler uses it (the
unconditional branch without gradients), and add ``lambda_v * |f(x0) - w_v|^2``
(``virtual_identity_weight``, mean over them). The paper's DiT learns the map prototype ->
face from 10k+ identities; a small dataset (LFW: 4,024 identities, 2.4 images each) does not
cover the sphere well enough for prototypes it never saw, and this term trains
the map on exactly the prototypes the service renders. ``virtual_identity_holdout`` keeps
the last rows of W_V out of it so that generalisation can still be measured.

EMA weights (diffusers ``EMAModel``) are what the artifact stores and the sampler uses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vigface.config import TrainDiTConfig
from vigface.data import AlignedFaceFolder, DatasetError
from vigface.data.augment import to_model_input
from vigface.fr_model import FRModel
from vigface.generator.artifact import Generator
from vigface.generator.diffusion import (
    MIN_NOISE_STD,
    cfg_combine,
    ddim_step,
    predict_x0,
    signal_fraction,
    to_velocity,
    training_scheduler,
    velocity_loss_target,
)
from vigface.generator.dit import FaceDiT
from vigface.generator.landmarks import CROP_SIZE, render_heatmaps
from vigface.pose import YAW_BINS, PoseBank
from vigface.precision import autocast
from vigface.training.distributed import barrier, cleanup, init_distributed
from vigface.training.run import TrainingRun
from vigface.training.schedule import diffusion_step

log = logging.getLogger(__name__)

# Mirror image: left/right eyes and mouth corners swap (insightface 5-point order).
FLIP_ORDER = [1, 0, 2, 4, 3]


def load_face_data(data_dir: Path, size: int, fr: FRModel, progress: bool):
    """Images at ``size``, landmarks (N, 5, 2) and the FR class row of each image."""
    ds = AlignedFaceFolder.scan(data_dir)
    if ds.landmarks_file is None:
        raise DatasetError(
            f"no landmarks CSV beside or inside {data_dir} (need <dir>_landmarks.csv)"
        )
    missing = [s.path.name for s in ds.samples if s.landmarks is None]
    if missing:
        raise DatasetError(
            f"{len(missing)} images have no landmarks in {ds.landmarks_file}, e.g. {missing[0]}"
        )
    images, rows = load_with_prototype_rows(ds, fr, size, progress)
    landmarks = np.stack([s.landmarks for s in ds.samples]).astype(np.float32)
    return images, landmarks, rows


def load_with_prototype_rows(ds: AlignedFaceFolder, fr: FRModel, size: int, progress: bool):
    """Images at ``size`` and the FR class row (prototype) of each; every identity of the
    folder must be one the FR model was trained on (stage 2 and the upsampler condition on
    those prototypes)."""
    row_of = {name: i for i, name in enumerate(fr.classes)}
    unknown = [c for c in ds.classes if c not in row_of]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} identities of {ds.root} have no prototype in the FR model "
            f"(e.g. {unknown[0]}): train on the stage-1 training identities"
        )
    images, labels = ds.load_array(size, progress=progress)
    return images, np.asarray([row_of[ds.classes[y]] for y in labels], dtype=np.int64)


def pose_balance_weights(landmarks: np.ndarray, alpha: float) -> torch.Tensor:
    """Per-image draw weights (count of images in its |yaw| bin)^-alpha, summing to 1. The
    generator turns faces less than asked where training faces are rare (LFW: 3 % of images
    beyond 35 degrees); this shows it those faces more often. |yaw| because flips mirror a
    face into the opposite bin anyway."""
    bins = np.abs(PoseBank.from_landmarks(landmarks).bins - YAW_BINS.index("frontal"))
    counts = np.bincount(bins)
    w = counts[bins].astype(np.float64) ** -alpha
    return torch.from_numpy(w / w.sum())


def epoch_order(n: int, seed: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch's image order: a seeded permutation, or ``n`` seeded weighted draws with
    replacement. A pure function of the seed, so a resumed run continues the same order."""
    g = torch.Generator().manual_seed(seed)
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def trainable_virtual_prototypes(fr: FRModel, cfg: TrainDiTConfig) -> torch.Tensor | None:
    """Unit rows of W_V that the virtual-identity term may use (all but the held-out tail)."""
    if cfg.virtual_identity_fraction == 0:
        return None
    count = fr.virtual_prototypes.shape[0] - cfg.virtual_identity_holdout
    if count <= 0:
        raise DatasetError(
            f"virtual_identity_fraction > 0 needs virtual prototypes: the FR model has "
            f"{fr.virtual_prototypes.shape[0]}, virtual_identity_holdout is "
            f"{cfg.virtual_identity_holdout}"
        )
    return F.normalize(fr.virtual_prototypes[:count].float(), dim=1)


# what may differ between a warm start and its source: the pixel side of the transformer
# (patch embedding and output projection are then trained afresh; the blocks carry over)
PIXEL_SIDE_KEYS = {"sample_size", "patch_size", "patch_bottleneck"}
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
        "pose_embedding": cfg.model.pose_embedding,
        "dit_parameters": int(sum(p.numel() for p in dit.parameters())),
        "steps": int(step),
        "batch_size": cfg.batch_size,
        "fr_card": fr.card,
    }


def augment_for_fr(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 px (edges replicated), per image:
    cheap views under which a face keeps its identity and a pixel trick usually does not."""
    b, _, h, w = x.shape
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shift = torch.randint(-2, 3, (b, 2), device=x.device).float()
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def margin_violation(
    f: torch.Tensor, own: torch.Tensor, bank: torch.Tensor, margin: float
) -> torch.Tensor:
    """``relu(margin + max_j cos(f, bank_j) - cos(f, own))`` per row, ``bank`` rows equal to
    ``own`` excluded (unit vectors throughout)."""
    own_cos = (f * own).sum(1)
    cos = f @ bank.T
    same = (own @ bank.T) > 1 - 1e-4
    hardest = cos.masked_fill(same, -2.0).amax(1)
    return F.relu(margin + hardest - own_cos)


def denoising_loss(v_hat: torch.Tensor, v_true: torch.Tensor) -> torch.Tensor:
    """The paper's diffusion term: mean squared error of the predicted velocity."""
    return F.mse_loss(v_hat.float(), v_true.float())


def identity_loss(f: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """The paper's identity term per image, ``||f_FR(x0_hat) - w||^2``: ``f`` the frozen FR
    model's unit embedding of the predicted clean image, ``identity`` its unit prototype."""
    return (f - identity).pow(2).sum(1)


def margin_term(
    f: torch.Tensor, own: torch.Tensor, real_prototypes: torch.Tensor, margin: float
) -> torch.Tensor:
    """Not in the paper: per image, how far the embedding falls short of being ``margin``
    nearer its own prototype than any real one (:func:`margin_violation`)."""
    return margin_violation(f, own, real_prototypes, margin)


def virtual_identity_loss(fr, x0_v: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """Not in the paper: faces rendered from virtual prototypes (no training image exists for
    them) pulled toward their prototype through the frozen FR model."""
    f = F.normalize(fr(x0_v.clamp(-1, 1)).float(), dim=1)
    return identity_loss(f, w_v).mean()


class DiTLoss(nn.Module):
    """The stage-2 objective for one batch; holds the DiT (trained) and the FR model (frozen)."""

    def __init__(
        self,
        dit: FaceDiT,
        fr: FRModel,
        scheduler,
        cfg: TrainDiTConfig,
        real_prototypes: torch.Tensor | None = None,
    ):
        super().__init__()
        self.dit, self.scheduler, self.cfg = dit, scheduler, cfg
        self.fr = fr.embedder
        # unit rows of W_R: the negatives of the margin term
        self.register_buffer("real_prototypes", real_prototypes, persistent=False)
        for p in self.fr.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.fr.eval()  # frozen: BatchNorm statistics and dropout stay in inference mode
        return self

    def forward(self, x0, heat, identity, virtual=None):
        """``identity``: (B, D) unit prototypes of the images; ``virtual``: (V, D) unit rows
        of W_V for the virtual-prototype term (or None). Returns (total, the denoising term,
        the identity term, the virtual-identity term), the last three detached for logging.

        The paper's objective is the first two: :func:`denoising_loss` plus
        ``identity_loss_weight`` x :func:`identity_loss`. The rest is this project's and off by
        default in the paper's configs: the timestep weighting and threshold of the identity
        term, its augmentation, :func:`margin_term` and :func:`virtual_identity_loss`."""
        cfg, b, device = self.cfg, x0.shape[0], x0.device
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        keep = (torch.rand(b, device=device) >= cfg.cond_drop_prob).float()  # CFG: drop w
        if cfg.pose_drop_prob > 0:  # the pose-free branch of two-condition guidance
            keep_pose = (torch.rand(b, device=device) >= cfg.pose_drop_prob).to(heat.dtype)
            heat = heat * keep_pose[:, None, None, None]
        out = self.dit(x_t, t, identity * keep[:, None], heat)
        v_hat = to_velocity(self.scheduler, x_t, out.float(), t, MIN_NOISE_STD)
        v_loss = denoising_loss(v_hat, velocity_loss_target(self.scheduler, x_t, x0, noise, t))
        id_loss = vid_loss = torch.zeros((), device=device)
        abar = signal_fraction(self.scheduler, t)
        omega = abar if cfg.identity_loss_weighting == "alpha_bar" else torch.ones_like(abar)
        use = (keep > 0) & (abar >= cfg.identity_loss_min_alpha_bar)
        if cfg.identity_loss_weight > 0 and use.any():
            x0_hat = predict_x0(self.scheduler, x_t[use], out[use].float(), t[use]).clamp(-1, 1)
            if cfg.identity_augment:
                x0_hat = augment_for_fr(x0_hat)
            f = F.normalize(self.fr(x0_hat).float(), dim=1)
            per_image = identity_loss(f, identity[use])
            if cfg.identity_margin_weight > 0:
                per_image = per_image + cfg.identity_margin_weight * margin_term(
                    f, identity[use], self.real_prototypes, cfg.identity_margin
                )
            id_loss = (omega[use] * per_image).sum() / keep.sum()
        n_virtual = round(b * cfg.virtual_identity_fraction) if virtual is not None else 0
        if n_virtual:
            w_v = virtual[torch.randint(0, len(virtual), (n_virtual,), device=device)]
            pose = heat[torch.randint(0, b, (n_virtual,), device=device)]
            x0_v = self.render(w_v, pose, cfg.virtual_identity_steps, cfg.virtual_identity_guidance)
            vid_loss = virtual_identity_loss(self.fr, x0_v, w_v)
        total = v_loss + cfg.identity_loss_weight * id_loss + cfg.virtual_identity_weight * vid_loss
        return total, v_loss.detach(), id_loss.detach(), vid_loss.detach()

    def render(self, w, heat, steps: int, guidance: float = 1.0) -> torch.Tensor:
        """Differentiable DDIM (eta 0) from pure noise; returns the last x0 estimate.

        The grid is drawn afresh on every call (the first step at t = T - 1, the others at
        random timesteps): a fixed grid lets the DiT learn identity only at those few
        timesteps, which does not carry over to the sampler's 25-step trajectories. With
        ``guidance`` > 1 each step uses CFG as the sampler does; the unconditional branch runs
        without gradients (it serves every identity, so there is nothing to learn there).
        """
        n = self.scheduler.config.num_train_timesteps
        rest = torch.randperm(n - 2)[: steps - 1] + 1
        grid = [n - 1, *sorted(rest.tolist(), reverse=True)]
        s = self.dit.config.sample_size
        x = torch.randn(len(w), 3, s, s, device=w.device)
        for i, t in enumerate(grid):
            tt = torch.full((len(w),), t, device=w.device)
            v = self.dit(x, tt, w, heat).float()
            if guidance != 1.0:
                with torch.no_grad():
                    v_u = self.dit(x, tt, torch.zeros_like(w), heat).float()
                v = cfg_combine(v, v_u, guidance)
            if i == len(grid) - 1:
                return predict_x0(self.scheduler, x, v, tt)
            x = ddim_step(self.scheduler, x, v, t, grid[i + 1])
        raise ValueError("steps must be >= 1")


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
    ax[1].plot(steps, [r["id_loss"] for r in recs], color="tab:orange", label="real")
    if any(r.get("virtual_id_loss") for r in recs):
        ax[1].plot(steps, [r.get("virtual_id_loss", 0) for r in recs], label="virtual")
        ax[1].legend()
    ax[1].set(title="identity loss (weighted)", xlabel="step")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def train_dit(
    cfg: TrainDiTConfig,
    data_dir: str | Path,
    fr_dir: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> Generator | None:
    ctx = init_distributed(device)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + ctx.rank)
    fr = FRModel.load(fr_dir, device=ctx.device)
    size = cfg.model.sample_size
    images, landmarks, rows = load_face_data(data_dir, size, fr, progress and ctx.is_main)
    images_t, lms_t = torch.from_numpy(images), torch.from_numpy(landmarks)
    protos = F.normalize(fr.real_prototypes.float(), dim=1).to(ctx.device)
    rows_t = torch.from_numpy(rows)
    draw_weights = pose_balance_weights(landmarks, cfg.pose_balance) if cfg.pose_balance else None
    virtual = trainable_virtual_prototypes(fr, cfg)
    virtual = virtual.to(ctx.device) if virtual is not None else None

    dit = FaceDiT(identity_dim=protos.shape[1], **cfg.model.model_dump()).to(ctx.device)
    if cfg.init_from:
        warm_start(dit, Path(cfg.init_from))
    scheduler = training_scheduler(**cfg.diffusion.model_dump())
    loss_module = DiTLoss(dit, fr, scheduler, cfg, real_prototypes=protos).to(ctx.device)
    params = list(dit.parameters())
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    steps_per_epoch = len(rows) // (cfg.batch_size * ctx.world_size)
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(rows)} images are fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs

    run = TrainingRun(
        out_dir,
        {"dit": dit, "ema": ema, "optimizer": opt, "scheduler": sched},
        cfg.max_minutes,
        is_main=ctx.is_main,
        device=ctx.device,
    )
    step = (run.resume(resume) or {}).get("step", 0)
    model = DDP(loss_module, find_unused_parameters=False) if ctx.enabled else loss_module

    def checkpoint():
        run.checkpoint(step=step)
        if ctx.is_main:
            plot_losses(run.log_path, out_dir / "loss_curve.png")

    bar = tqdm(total=total, initial=step, desc="train-dit", disable=not (progress and ctx.is_main))
    run_v = run_id = run_vid = 0.0
    stopped = False
    while step < total:
        epoch = step // steps_per_epoch
        perm = epoch_order(len(rows), cfg.seed + epoch, draw_weights)
        perm = perm[ctx.rank :: ctx.world_size]
        for i in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x0 = to_model_input(images_t[idx]).to(ctx.device)
            lms = lms_t[idx].clone()
            if cfg.flip:
                flip = torch.rand(len(idx)) < 0.5
                x0 = torch.where(flip[:, None, None, None].to(ctx.device), x0.flip(-1), x0)
                mirrored = lms[:, FLIP_ORDER].clone()
                mirrored[..., 0] = CROP_SIZE - mirrored[..., 0]
                lms = torch.where(flip[:, None, None], mirrored, lms)
            heat = render_heatmaps(lms.to(ctx.device), size)
            w = protos[rows_t[idx].to(ctx.device)]
            with autocast(ctx.device, cfg.precision):
                loss, v_loss, id_loss, vid_loss = model(x0, heat, w, virtual)
            diffusion_step(loss, params, opt, sched, ema, cfg.grad_clip)
            step += 1
            bar.update(1)
            run_v += float(v_loss)
            run_id += float(id_loss)
            run_vid += float(vid_loss)
            run.tick()
            if ctx.is_main and step % cfg.log_every == 0:
                rec = {
                    "step": step,
                    "epoch": epoch + 1,
                    "v_loss": round(run_v / cfg.log_every, 5),
                    "id_loss": round(run_id / cfg.log_every, 5),
                    "virtual_id_loss": round(run_vid / cfg.log_every, 5),
                    "lr": sched.get_last_lr()[0],
                }
                run_v = run_id = run_vid = 0.0
                bar.set_postfix(v=rec["v_loss"], id=rec["id_loss"])
                run.log(rec)
            if step % cfg.checkpoint_every_steps == 0 or step == total:
                checkpoint()
            out_of_time = run.out_of_time
            if ctx.enabled and cfg.max_minutes is not None:  # all ranks stop at the same step
                flag = torch.tensor(float(out_of_time), device=ctx.device)
                torch.distributed.all_reduce(flag)
                out_of_time = bool(flag > 0)
            if out_of_time:
                checkpoint()
            if out_of_time:
                stopped = True
                log.info("stopping at step %d: max_minutes=%s reached", step, cfg.max_minutes)
            if step >= total or stopped:
                break
        if stopped:
            break
    bar.close()
    barrier(ctx)
    result = None
    if ctx.is_main:
        ema_dit = FaceDiT.from_config(dit.config)
        ema.copy_to(ema_dit.parameters())
        ema_dit.eval()
        result = Generator(
            dit=ema_dit,
            scheduler=scheduler,
            fr=fr,
            card={
                **generator_card(cfg, data_dir, fr_dir, fr, dit, step),
                "batch_size": cfg.batch_size * ctx.world_size,
                **run.provenance(cfg.precision),
            },
            pose_landmarks=landmarks,
        )
        (out_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2))
        result.save(out_dir)
    cleanup(ctx)
    return result
