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
    stream = open_face_stream(data_dir, cfg.backbone.input_size, cfg.seed)
    if stream is None:
        images, labels, classes, skipped = load_training_set(
            data_dir, cfg, progress and ctx.is_main
        )
        images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
        num_images = len(labels)
    else:
        if cfg.data.min_images_per_identity > 1:
            raise DatasetError(
                "data.min_images_per_identity applies to ImageFolder sets only: filter a "
                f"streamed set ({data_dir}) when it is written"
            )
        if stream.num_classes is None:
            raise DatasetError(f"{data_dir}: the RecordIO has no header record with its classes")
        classes = [str(c) for c in range(stream.num_classes)]
        num_images, skipped = len(stream), 0
    n, k = len(classes), cfg.head.num_virtual

    module = FRTrainingModule(cfg, n, ctx.world_size).to(ctx.device)
    mem_fmt = torch.channels_last if cfg.backbone.channels_last else torch.contiguous_format
    module.backbone.to(memory_format=mem_fmt)
    steps_per_epoch = num_images // (cfg.batch_size * ctx.world_size)
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{num_images} images are fewer than one batch of {cfg.batch_size} x {ctx.world_size}"
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
        shard_rank=ctx.rank if module.sharded else None,
    )

    def same_identities(state: dict) -> None:
        if state["classes"] != classes:
            raise DatasetError(f"checkpoint {run.checkpoint_path} was trained on other identities")

    start_epoch = (run.resume(resume, check=same_identities) or {}).get("epoch", 0)
    if ctx.enabled and module.sharded:  # each rank's slice is its own: DDP averages the rest
        DDP._set_params_and_buffers_to_ignore_for_model(module, ["head.real", "head.virtual"])
    model = DDP(module) if ctx.enabled else module
    step = start_epoch * steps_per_epoch
    aug_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 1000 + ctx.rank)

    def epoch_batches(epoch: int):
        """(uint8 images (B, S, S, 3), labels) of this rank, ``steps_per_epoch`` of them."""
        if stream is not None:
            loader = face_loader(
                stream, cfg.batch_size, cfg.data.loader_workers, cfg.seed, epoch,
                ctx.rank, ctx.world_size,
            )  # fmt: skip
            yield from loader
            return
        perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        perm = perm[ctx.rank :: ctx.world_size]
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            yield images_t[idx], labels_t[idx]

    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        batches = epoch_batches(epoch)
        model.train()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not (progress and ctx.is_main),
            leave=False,
        )
        running = 0.0
        done = 0
        for _ in bar:
            if step >= total_steps:
                break
            batch = next(batches, None)
            if batch is None:  # a stream split over ranks may give one rank a batch less
                break
            images_b, labels_b = batch
            x = to_model_input(images_b.to(ctx.device, non_blocking=True))
            x = augment_batch(x, cfg.augment, aug_gen).contiguous(memory_format=mem_fmt)
            y = labels_b.to(ctx.device).long()
            done += 1
            with autocast(ctx.device, cfg.precision):
                loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip and module.sharded:  # one norm over every rank's slice
                clip_grad_norm_sharded(
                    list(module.backbone.parameters()), list(module.head.parameters()),
                    o.grad_clip,
                )  # fmt: skip
            elif o.grad_clip:
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
        batches.close()  # a streamed epoch cut short: stop its loader processes now
        run.tick()
        real_w, virtual_w = module.prototypes()
        if ctx.is_main:
            rec = {
                "epoch": epoch + 1,
                "epoch_s": round(time.time() - t0, 1),
                "img_per_s": round(done * cfg.batch_size * ctx.world_size / (time.time() - t0), 1),
                "orthogonality": orthogonality(real_w, virtual_w),
            }
            run.log(rec)
            log.info("epoch %d/%d done in %.0fs", epoch + 1, epochs, rec["epoch_s"])
        if (epoch + 1) % cfg.checkpoint_every_epochs == 0 or epoch + 1 == epochs:
            run.checkpoint(epoch=epoch + 1, classes=classes)
        barrier(ctx)

    result = None
    real_w, virtual_w = module.prototypes()
    if ctx.is_main:
        result = FRModel(
            config=cfg,
            backbone=module.backbone.to(memory_format=torch.contiguous_format).eval(),
            real_prototypes=real_w.clone(),
            virtual_prototypes=virtual_w.clone(),
            sigma=module.sampler.sigma.detach().clone(),
            classes=classes,
            card={
                "kind": "fr",
                "train_data": str(data_dir),
                "num_real": n,
                "num_virtual": k,
                "num_images": int(num_images),
                "skipped_images": skipped,
                "epochs": epochs,
                "steps": step,
                "world_size": ctx.world_size,
                **run.provenance(cfg.precision),
                "orthogonality": orthogonality(real_w, virtual_w),
                "prototype_shards": ctx.world_size if module.sharded else 1,
            },
        )
        result.save(out_dir)
    cleanup(ctx)
    return result
