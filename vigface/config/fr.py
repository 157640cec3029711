"""Stage 1: the FR model's training config (backbone, ArcFace head, data, optimiser)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vigface.config.strict import Strict
from vigface.precision import Precision


class BackboneConfig(Strict):
    name: Literal["iresnet"] = "iresnet"
    depth: int | None = Field(50, description="standard depth (18/34/50/100/200) if layers unset")
    layers: list[int] | None = Field(None, description="blocks per stage, overrides depth")
    widths: list[int] = [64, 128, 256, 512]
    input_size: int = Field(112, ge=16, description="square input side the network sees")
    embedding_dim: int = Field(512, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    channels_last: bool = True

    @model_validator(mode="after")
    def _depth_or_layers(self):
        from vigface.backbones import DEPTHS

        if self.layers is None and self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)} when layers is not given")
        return self


class HeadConfig(Strict):
    scale: float = Field(64.0, gt=0)
    margin: float = Field(0.5, ge=0, lt=1.5)
    num_virtual: int = Field(0, ge=0, description="k virtual prototypes W_V")
    sigma_ema: float = Field(0.9, ge=0, le=1, description="EMA coefficient alpha for sigma^2")
    sample_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Partial FC: share of the n + k classes whose logits each step computes "
        "(the batch's own always); 1.0 = the full softmax",
    )
    virtual_subspace_energy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="after every step, project W_V onto the span of W_R's leading principal "
        "directions holding this share of their energy (vigface/losses/subspace.py); "
        "None = unconstrained, as in the paper",
    )
    shard_across_ranks: bool = Field(
        False,
        description="under torchrun, split the rows of [W_R; W_V] over the ranks (Partial FC "
        "as arcface_torch does it: vigface/losses/partial_fc.py); each rank keeps 1/world",
    )

    @model_validator(mode="after")
    def _shard_alone(self):
        if self.shard_across_ranks and self.virtual_subspace_energy is not None:
            raise ValueError(
                "virtual_subspace_energy needs the whole W_R on every rank: it cannot be "
                "combined with shard_across_ranks"
            )
        return self


class DataConfig(Strict):
    min_images_per_identity: int = Field(1, ge=1)
    landmarks: str | None = None
    loader_workers: int = Field(
        4,
        ge=0,
        le=64,
        description="decoding processes per rank for streamed sets (RecordIO, WebDataset); "
        "an ImageFolder is read into memory once and needs none",
    )


class AugmentConfig(Strict):
    flip: bool = True
    shift: int = Field(0, ge=0, description="max random translation in pixels")
    scale_jitter: float = Field(0.0, ge=0, lt=0.5, description="random zoom range +-")
    brightness: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    saturation: float = Field(0.0, ge=0, lt=1)
    grayscale_p: float = Field(0.0, ge=0, le=1)


class OptimConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    head_lr_mult: float = Field(1.0, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)


class TrainFRConfig(Strict):
    """Everything ``vigface train-fr`` needs besides the data and output paths."""

    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="a fixed step budget instead of epochs (the utility probe)"
    )
    batch_size: int = Field(128, ge=2, description="real samples per step, per process")
    seed: int = 0
    log_every: int = Field(20, ge=1)
    checkpoint_every_epochs: int = Field(1, ge=1)
    eval_pairs: str | None = Field(None, description="optional .bin evaluated after training")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all)")
    precision: Precision = Field(
        "auto", description="autocast: bf16 on CUDA and CPUs with native bf16 (auto), or forced"
    )
