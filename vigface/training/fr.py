"""Stage 1: ArcFace training of the FR backbone with virtual identity prototypes.

One process per device; under ``torchrun`` the same code trains with DDP (each rank takes
every ``world_size``-th sample of a shared permutation). The output folder is a model-store
FR artifact (see :mod:`vigface.fr_model`) plus ``checkpoints/last.pt`` for resuming and
``train_log.jsonl`` with loss, sigma and prototype statistics.
"""

from __future__ import annotations

import logging
import time
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
from vigface.evaluation.orthogonality import orthogonality
from vigface.fr_model import FRModel
from vigface.losses import PrototypeHead, VirtualEmbeddingSampler, num_virtual_per_batch
from vigface.precision import autocast
from vigface.training.distributed import barrier, cleanup, init_distributed
from vigface.training.run import TrainingRun
from vigface.training.schedule import warmup_cosine

log = logging.getLogger(__name__)


class FRTrainingModule(nn.Module):
    """Backbone + prototype head + sigma state: one forward computes the VIGFace stage-1 loss."""

    def __init__(self, cfg: TrainFRConfig, num_real: int):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone)
        self.head = PrototypeHead(
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
        self.sampler.update(feats.detach(), self.head.real.detach()[labels])
        b_v = num_virtual_per_batch(len(labels), self.head.num_real, self.head.num_virtual)
        v_emb = v_lab = None
        if b_v:
            v_emb, v_lab = self.sampler.sample(self.head.virtual.detach(), b_v)
        return self.head(feats, labels, v_emb, v_lab)


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
    images, labels, classes, skipped = load_training_set(data_dir, cfg, progress and ctx.is_main)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n, k = len(classes), cfg.head.num_virtual

    module = FRTrainingModule(cfg, n).to(ctx.device)
    mem_fmt = torch.channels_last if cfg.backbone.channels_last else torch.contiguous_format
    module.backbone.to(memory_format=mem_fmt)
    steps_per_epoch = len(labels) // (cfg.batch_size * ctx.world_size)
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{len(labels)} images are fewer than one batch of {cfg.batch_size} x {ctx.world_size}"
        )
    # a step budget (cfg.max_steps) fixes the work whatever the dataset's size: the probe
    # that compares datasets trains each for the same number of steps
    epochs = -(-cfg.max_steps // steps_per_epoch) if cfg.max_steps else cfg.epochs
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
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
        opt, lambda s: warmup_cosine(s, warmup, total_steps, o.min_lr_ratio)
    )

    run = TrainingRun(
        out_dir,
        {"module": module, "optimizer": opt, "scheduler": sched},
        is_main=ctx.is_main,
        device=ctx.device,
    )

    def same_identities(state: dict) -> None:
        if state["classes"] != classes:
            raise DatasetError(f"checkpoint {run.checkpoint_path} was trained on other identities")

    start_epoch = (run.resume(resume, check=same_identities) or {}).get("epoch", 0)
    model = DDP(module) if ctx.enabled else module
    step = start_epoch * steps_per_epoch
    aug_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 1000 + ctx.rank)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        perm = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        )
        perm = perm[ctx.rank :: ctx.world_size]
        model.train()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not (progress and ctx.is_main),
            leave=False,
        )
        running = 0.0
        for i in bar:
            if step >= total_steps:
                break
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = to_model_input(images_t[idx].to(ctx.device, non_blocking=True))
            x = augment_batch(x, cfg.augment, aug_gen).contiguous(memory_format=mem_fmt)
            y = labels_t[idx].to(ctx.device)
            with autocast(ctx.device, cfg.precision):
                loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_(module.parameters(), o.grad_clip)
            opt.step()
            if cfg.head.virtual_subspace_energy and module.head.num_virtual:
                module.head.constrain_virtual(cfg.head.virtual_subspace_energy)
            sched.step()
            step += 1
            running += float(loss.detach())
            if ctx.is_main and step % cfg.log_every == 0:
                sigma = module.sampler.sigma
                rec = {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": round(running / cfg.log_every, 4),
                    "lr": round(sched.get_last_lr()[0], 6),
                    "sigma_mean": round(float(sigma.mean()), 5),
                    "sigma_norm": round(float(sigma.norm()), 4),
                }
                running = 0.0
                bar.set_postfix(loss=rec["loss"], sigma=rec["sigma_mean"])
                run.log(rec)
        run.tick()
        if ctx.is_main:
            ortho = orthogonality(module.head.real.detach(), module.head.virtual.detach())
            rec = {
                "epoch": epoch + 1,
                "epoch_s": round(time.time() - t0, 1),
                "img_per_s": round(
                    steps_per_epoch * cfg.batch_size * ctx.world_size / (time.time() - t0), 1
                ),
                "orthogonality": ortho,
            }
            run.log(rec)
            log.info("epoch %d/%d done in %.0fs", epoch + 1, epochs, rec["epoch_s"])
            if (epoch + 1) % cfg.checkpoint_every_epochs == 0 or epoch + 1 == epochs:
                run.checkpoint(epoch=epoch + 1, classes=classes)
        barrier(ctx)

    result = None
    if ctx.is_main:
        head = module.head
        result = FRModel(
            config=cfg,
            backbone=module.backbone.to(memory_format=torch.contiguous_format).eval(),
            real_prototypes=head.real.detach().clone(),
            virtual_prototypes=head.virtual.detach().clone(),
            sigma=module.sampler.sigma.detach().clone(),
            classes=classes,
            card={
                "kind": "fr",
                "train_data": str(data_dir),
                "num_real": n,
                "num_virtual": k,
                "num_images": int(len(labels)),
                "skipped_images": skipped,
                "epochs": epochs,
                "steps": step,
                "world_size": ctx.world_size,
                **run.provenance(cfg.precision),
                "orthogonality": orthogonality(head.real.detach(), head.virtual.detach()),
            },
        )
        result.save(out_dir)
    cleanup(ctx)
    return result
