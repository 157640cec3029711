"""Stage 1: ArcFace training of the FR backbone with virtual identity prototypes.

One process per device; under ``torchrun`` the same code trains with DDP (each rank takes
every ``world_size``-th sample of a shared permutation). With ``head.shard_across_ranks``
the prototype rows are split over the ranks (:mod:`vigface.losses.partial_fc`): DDP then
averages the backbone only, and every rank checkpoints its own slice.

Data: an ImageFolder is decoded into memory once (LFW-sized sets); a RecordIO folder or
WebDataset shards are streamed by ``data.loader_workers`` decoding processes per rank
(:mod:`vigface.data.streaming`), so CASIA- or WebFace-sized sets need no more memory than
their index. The output folder is a model-store
FR artifact (see :mod:`vigface.fr_model`) plus ``checkpoints/last.pt`` for resuming and
``train_log.jsonl`` with loss, sigma and prototype statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vigface.backbones import build_backbone
from vigface.config import TrainFRConfig
from vigface.data import AlignedFaceFolder, DatasetError
from vigface.data.augment import augment_batch, to_model_input
from vigface.data.streaming import face_loader, open_face_stream
from vigface.evaluation.orthogonality import orthogonality
from vigface.fr_model import FRModel
from vigface.losses import PrototypeHead, VirtualEmbeddingSampler, num_virtual_per_batch
from vigface.losses.partial_fc import ShardedPrototypeHead, clip_grad_norm_sharded
from vigface.precision import autocast
from vigface.training.distributed import barrier, cleanup, init_distributed
from vigface.training.run import TrainingRun
from vigface.training.schedule import warmup_cosine

log = logging.getLogger(__name__)


class FRTrainingModule(nn.Module):
    """Backbone + prototype head + sigma state: one forward computes the VIGFace stage-1 loss."""

    def __init__(self, cfg: TrainFRConfig, num_real: int, world_size: int = 1):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone)
        self.sharded = cfg.head.shard_across_ranks and world_size > 1
        self.world_size = world_size
        head_cls = ShardedPrototypeHead if self.sharded else PrototypeHead
        self.head = head_cls(
            num_real,
            cfg.head.num_virtual,
            cfg.backbone.embedding_dim,
            scale=cfg.head.scale,
            margin=cfg.head.margin,
            sample_rate=cfg.head.sample_rate,
        )
        self.sampler = VirtualEmbeddingSampler(cfg.backbone.embedding_dim, cfg.head.sigma_ema)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        feats = self.backbone(x)
        head = self.head
        if self.sharded:  # this rank draws from its own slice of W_V, labels made global
            self.sampler.fold(head.batch_variance(feats.detach(), labels))
            b_v = num_virtual_per_batch(
                len(labels) * self.world_size, head.num_real, len(head.virtual)
            )
            offset = head.virtual_range[0]
        else:
            self.sampler.update(feats.detach(), head.real.detach()[labels])
            b_v = num_virtual_per_batch(len(labels), head.num_real, head.num_virtual)
            offset = 0
        v_emb = v_lab = None
        if b_v:
            v_emb, v_lab = self.sampler.sample(head.virtual.detach(), b_v)
            v_lab = v_lab + offset
        return head(feats, labels, v_emb, v_lab)

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_R, W_V) whole (collective when the rows are split over ranks)."""
        if self.sharded:
            return self.head.gather_full()
        return self.head.real.detach(), self.head.virtual.detach()


def load_training_set(data_dir: Path, cfg: TrainFRConfig, progress: bool):
    """Images at the backbone's input size, labels and class names, after the config's
    identity filter; the same set stage 1 and the virtual refit see."""
    ds = AlignedFaceFolder.scan(data_dir, cfg.data.landmarks)
    images, labels = ds.load_array(cfg.backbone.input_size, progress=progress)
    classes = ds.classes
    if cfg.data.min_images_per_identity > 1:
        counts = np.bincount(labels, minlength=len(classes))
        keep = np.flatnonzero(counts >= cfg.data.min_images_per_identity)
        if len(keep) == 0:
            raise DatasetError(
                f"no identity in {data_dir} has >= {cfg.data.min_images_per_identity} images"
            )
        remap = np.full(len(classes), -1)
        remap[keep] = np.arange(len(keep))
        mask = remap[labels] >= 0
        images, labels = images[mask], remap[labels[mask]]
        classes = [classes[i] for i in keep]
    return images, labels, classes, len(ds.skipped)


@dataclass
class FRData:
    """A stage-1 training set: decoded into memory (an ImageFolder) or streamed."""

    classes: list[str]
    num_images: int
    skipped: int
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stream: object | None = None

    def batches(self, cfg: TrainFRConfig, epoch: int, ctx, steps_per_epoch: int):
        """(uint8 images (B, S, S, 3), labels) of this rank, ``steps_per_epoch`` of them."""
        if self.stream is not None:
            yield from face_loader(
                self.stream, cfg.batch_size, cfg.data.loader_workers, cfg.seed, epoch,
                ctx.rank, ctx.world_size,
            )  # fmt: skip
            return
        g = torch.Generator().manual_seed(cfg.seed + epoch)
        perm = torch.randperm(self.num_images, generator=g)[ctx.rank :: ctx.world_size]
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            yield self.images[idx], self.labels[idx]


def open_training_data(data_dir: Path, cfg: TrainFRConfig, progress: bool) -> FRData:
    stream = open_face_stream(data_dir, cfg.backbone.input_size, cfg.seed)
    if stream is None:
        images, labels, classes, skipped = load_training_set(data_dir, cfg, progress)
        return FRData(classes, len(labels), skipped, torch.from_numpy(images),
                      torch.from_numpy(labels))  # fmt: skip
    if cfg.data.min_images_per_identity > 1:
        raise DatasetError(
            "data.min_images_per_identity applies to ImageFolder sets only: filter a "
            f"streamed set ({data_dir}) when it is written"
        )
    if stream.num_classes is None:
        raise DatasetError(f"{data_dir}: the RecordIO has no header record with its classes")
    return FRData([str(c) for c in range(stream.num_classes)], len(stream), 0, stream=stream)


def build_optimizer(cfg: TrainFRConfig, module: FRTrainingModule, steps_per_epoch: int, total):
    """SGD or AdamW (the head at ``head_lr_mult`` times the rate), warm-up then cosine."""
    o = cfg.optim
    groups = [
        {"params": [p for p in module.backbone.parameters() if p.requires_grad], "lr": o.lr},
        {"params": list(module.head.parameters()), "lr": o.lr * o.head_lr_mult},
    ]
    if o.name == "sgd":
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    warmup = int(o.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup, total, o.min_lr_ratio)
    )
    return opt, sched


def optimizer_step(cfg: TrainFRConfig, module: FRTrainingModule, opt, sched, loss) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.optim.grad_clip
    if clip and module.sharded:  # one norm over every rank's slice
        clip_grad_norm_sharded(
            list(module.backbone.parameters()), list(module.head.parameters()), clip
        )
    elif clip:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()
    if cfg.head.virtual_subspace_energy and module.head.num_virtual:
        module.head.constrain_virtual(cfg.head.virtual_subspace_energy)
    sched.step()


@dataclass
class FRRun:
    """One stage-1 training run's state, shared by its epochs."""

    cfg: TrainFRConfig
    ctx: object
    data: FRData
    module: FRTrainingModule
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    run: TrainingRun
    steps_per_epoch: int
    total_steps: int
    epochs: int
    mem_fmt: torch.memory_format
    aug_gen: torch.Generator


def train_epoch(r: FRRun, epoch: int, step: int, progress: bool) -> int:
    """One epoch (or what is left of the step budget); logs and checkpoints it."""
    cfg, ctx = r.cfg, r.ctx
    t0 = time.time()
    batches = r.data.batches(cfg, epoch, ctx, r.steps_per_epoch)
    r.model.train()
    desc = f"epoch {epoch + 1}/{r.epochs}"
    bar = tqdm(range(r.steps_per_epoch), desc=desc, disable=not progress, leave=False)
    running, done = 0.0, 0
    for _ in bar:
        batch = next(batches, None) if step < r.total_steps else None
        if batch is None:  # the budget is spent, or a split stream gave this rank one less
            break
        x = to_model_input(batch[0].to(ctx.device, non_blocking=True))
        x = augment_batch(x, cfg.augment, r.aug_gen).contiguous(memory_format=r.mem_fmt)
        done += 1
        with autocast(ctx.device, cfg.precision):
            loss = r.model(x, batch[1].to(ctx.device).long())
        optimizer_step(cfg, r.module, r.opt, r.sched, loss)
        step += 1
        running += float(loss.detach())
        if ctx.is_main and step % cfg.log_every == 0:
            sigma = r.module.sampler.sigma
            rec = {
                "step": step,
                "epoch": epoch + 1,
                "loss": round(running / cfg.log_every, 4),
                "lr": round(r.sched.get_last_lr()[0], 6),
                "sigma_mean": round(float(sigma.mean()), 5),
                "sigma_norm": round(float(sigma.norm()), 4),
            }
            running = 0.0
            bar.set_postfix(loss=rec["loss"], sigma=rec["sigma_mean"])
            r.run.log(rec)
    batches.close()  # a streamed epoch cut short: stop its loader processes now
    r.run.tick()
    real_w, virtual_w = r.module.prototypes()
    if ctx.is_main:
        seconds = time.time() - t0
        r.run.log({
            "epoch": epoch + 1,
            "epoch_s": round(seconds, 1),
            "img_per_s": round(done * cfg.batch_size * ctx.world_size / seconds, 1),
            "orthogonality": orthogonality(real_w, virtual_w),
        })  # fmt: skip
        log.info("epoch %d/%d done in %.0fs", epoch + 1, r.epochs, seconds)
    if (epoch + 1) % cfg.checkpoint_every_epochs == 0 or epoch + 1 == r.epochs:
        r.run.checkpoint(epoch=epoch + 1, classes=r.data.classes)
    barrier(ctx)
    return step


def save_fr(r: FRRun, data_dir: Path, out_dir: Path, step: int) -> FRModel | None:
    real_w, virtual_w = r.module.prototypes()  # collective: every rank takes part
    if not r.ctx.is_main:
        return None
    card = {
        "kind": "fr",
        "train_data": str(data_dir),
        "num_real": len(r.data.classes),
        "num_virtual": r.cfg.head.num_virtual,
        "num_images": int(r.data.num_images),
        "skipped_images": r.data.skipped,
        "epochs": r.epochs,
        "steps": step,
        "world_size": r.ctx.world_size,
        **r.run.provenance(r.cfg.precision),
        "orthogonality": orthogonality(real_w, virtual_w),
        "prototype_shards": r.ctx.world_size if r.module.sharded else 1,
    }
    result = FRModel(
        config=r.cfg,
        backbone=r.module.backbone.to(memory_format=torch.contiguous_format).eval(),
        real_prototypes=real_w.clone(),
        virtual_prototypes=virtual_w.clone(),
        sigma=r.module.sampler.sigma.detach().clone(),
        classes=r.data.classes,
        card=card,
    )
    result.save(out_dir)
    return result


def train_fr(
    cfg: TrainFRConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> FRModel | None:
    """Train and write the artifact to ``out_dir``; returns the model on rank 0."""
    ctx = init_distributed(device)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + ctx.rank)
    data = open_training_data(data_dir, cfg, progress and ctx.is_main)
    module = FRTrainingModule(cfg, len(data.classes), ctx.world_size).to(ctx.device)
    mem_fmt = torch.channels_last if cfg.backbone.channels_last else torch.contiguous_format
    module.backbone.to(memory_format=mem_fmt)
    steps_per_epoch = data.num_images // (cfg.batch_size * ctx.world_size)
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{data.num_images} images are fewer than one batch of {cfg.batch_size} x "
            f"{ctx.world_size}"
        )
    # a step budget (cfg.max_steps) fixes the work whatever the dataset's size: the probe
    # that compares datasets trains each for the same number of steps
    epochs = -(-cfg.max_steps // steps_per_epoch) if cfg.max_steps else cfg.epochs
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    opt, sched = build_optimizer(cfg, module, steps_per_epoch, total_steps)
    run = TrainingRun(
        out_dir,
        {"module": module, "optimizer": opt, "scheduler": sched},
        is_main=ctx.is_main,
        device=ctx.device,
        shard_rank=ctx.rank if module.sharded else None,
    )

    def same_identities(state: dict) -> None:
        if state["classes"] != data.classes:
            raise DatasetError(f"checkpoint {run.checkpoint_path} was trained on other identities")

    start_epoch = (run.resume(resume, check=same_identities) or {}).get("epoch", 0)
    if ctx.enabled and module.sharded:  # each rank's slice is its own: DDP averages the rest
        DDP._set_params_and_buffers_to_ignore_for_model(module, ["head.real", "head.virtual"])
    model = DDP(module) if ctx.enabled else module
    aug_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 1000 + ctx.rank)
    r = FRRun(cfg, ctx, data, module, model, opt, sched, run, steps_per_epoch, total_steps,
              epochs, mem_fmt, aug_gen)  # fmt: skip
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        step = train_epoch(r, epoch, step, progress and ctx.is_main)
    result = save_fr(r, data_dir, out_dir, step)
    cleanup(ctx)
    return result
