"""Typed YAML configs. Unknown keys are errors, so a typo never silently trains the default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vigface.precision import Precision


class ConfigError(ValueError):
    """A config file is missing, not YAML, or fails validation; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Strict):
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


class HeadConfig(_Strict):
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


class DataConfig(_Strict):
    min_images_per_identity: int = Field(1, ge=1)
    landmarks: str | None = None
    loader_workers: int = Field(
        4,
        ge=0,
        le=64,
        description="decoding processes per rank for streamed sets (RecordIO, WebDataset); "
        "an ImageFolder is read into memory once and needs none",
    )


class AugmentConfig(_Strict):
    flip: bool = True
    shift: int = Field(0, ge=0, description="max random translation in pixels")
    scale_jitter: float = Field(0.0, ge=0, lt=0.5, description="random zoom range +-")
    brightness: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    saturation: float = Field(0.0, ge=0, lt=1)
    grayscale_p: float = Field(0.0, ge=0, le=1)


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    head_lr_mult: float = Field(1.0, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(5.0, gt=0)


class TrainFRConfig(_Strict):
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


def load_config(path: str | Path, model: type[BaseModel] = TrainFRConfig, overrides=None):
    """Read a YAML file into ``model``; ``overrides`` is a dict merged on top (dotted keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from exc


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with YAML typing of the values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


class DiTModelConfig(_Strict):
    """FaceDiT size; see :class:`vigface.generator.dit.FaceDiT`."""

    sample_size: int = Field(32, ge=8)
    patch_size: int = Field(2, ge=1)
    hidden_size: int = Field(384, ge=16)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_bottleneck: int | None = Field(
        None, ge=4, description="JiT bottleneck patch embedding width (None: none)"
    )
    pose_embedding: bool = Field(
        False, description="also add the landmark coordinates to every block's condition"
    )

    @model_validator(mode="after")
    def _divisible(self):
        if self.sample_size % self.patch_size:
            raise ValueError("sample_size must be a multiple of patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        return self


class DiffusionConfig(_Strict):
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["v_prediction", "sample"] = Field(
        "v_prediction", description="what the network predicts: v, or the clean image (JiT)"
    )
    resolution_shift: float = Field(
        1.0, gt=0, description="log-SNR moved by -2 log(k): k = side / 64 for large images"
    )


class TrainDiTConfig(_Strict):
    """Everything ``vigface train-dit`` needs besides the data, FR model and output paths."""

    model: DiTModelConfig = DiTModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    cond_drop_prob: float = Field(0.1, ge=0, lt=1, description="P(w -> 0) for CFG")
    pose_drop_prob: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="P(landmarks -> 0), drawn apart from the identity's drop: trains the"
        " pose-free branch that two-condition guidance (pose_guidance) needs",
    )
    identity_loss_weight: float = Field(0.1, ge=0, description="lambda of |f(x0_hat) - w|^2")
    identity_loss_min_alpha_bar: float = Field(
        0.5, ge=0, le=1, description="identity loss only where alpha_bar_t >= this (low noise)"
    )
    identity_loss_weighting: Literal["alpha_bar", "uniform"] = Field(
        "alpha_bar", description="per-sample weight of the identity term: alpha_bar_t or 1"
    )
    identity_margin_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the margin term: own prototype closer than any other real one",
    )
    identity_margin: float = Field(0.2, ge=0, le=2, description="cosine margin of the margin term")
    identity_augment: bool = Field(
        False,
        description="flip and shift x0_hat (1-2 px) before the FR model in the identity terms",
    )
    virtual_identity_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="virtual prototypes rendered per batch, as a share of the batch size",
    )
    virtual_identity_weight: float = Field(
        1.0, ge=0, description="lambda_v of the virtual-prototype identity term"
    )
    virtual_identity_steps: int = Field(
        3, ge=1, le=50, description="DDIM steps of the differentiable virtual-prototype render"
    )
    virtual_identity_guidance: float = Field(
        4.0, ge=1, description="CFG weight inside the virtual-prototype render"
    )
    virtual_identity_holdout: int = Field(
        0, ge=0, description="the last N virtual prototypes are never trained on (for evaluation)"
    )
    init_from: str | None = Field(
        None, description="generator folder or store name whose DiT weights start training"
    )
    flip: bool = True
    pose_balance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="draw images with weight (images in their |yaw| bin)^-a: 0 = as the data is,"
        " 1 = every |yaw| bin equally often (profiles are rare in LFW)",
    )
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    epochs: int = Field(10, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop (and save) after this long")
    batch_size: int = Field(64, ge=1, description="per process")
    seed: int = 0
    log_every: int = Field(20, ge=1)
    checkpoint_every_steps: int = Field(500, ge=1)
    threads: int | None = Field(None, ge=1)
    precision: Precision = Field(
        "auto", description="autocast: bf16 on CUDA and CPUs with native bf16 (auto), or forced"
    )


class UpsamplerModelConfig(_Strict):
    """FaceUpsampler size; see :class:`vigface.generator.upsampler.FaceUpsampler`."""

    low_size: int = Field(32, ge=8, description="input side (the DiT's sample_size)")
    sample_size: int = Field(64, ge=16, description="output side")
    block_out_channels: list[int] = Field([32, 64, 128], min_length=2, max_length=5)
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_num_groups: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _shapes(self):
        if self.sample_size <= self.low_size:
            raise ValueError("sample_size must be larger than low_size")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every block_out_channels entry")
        return self


class TrainUpsamplerConfig(_Strict):
    """Everything ``vigface train-upsampler`` needs besides the data, generator and output."""

    model: UpsamplerModelConfig = UpsamplerModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    crop_size: int = Field(32, ge=8, description="square crop of the output side per sample")
    cond_noise_max: float = Field(
        0.05, ge=0, le=1, description="std of the noise added to the 32-px input: U(0, this)"
    )
    cond_drop_prob: float = Field(0.1, ge=0, lt=1, description="P(w -> 0): identity optional")
    flip: bool = True
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    max_steps: int = Field(20000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop (and save) after this long")
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    log_every: int = Field(20, ge=1)
    checkpoint_every_steps: int = Field(250, ge=1)
    threads: int | None = Field(None, ge=1)
    precision: Precision = Field("auto", description="autocast: bf16 where native (auto)")

    @model_validator(mode="after")
    def _crop(self):
        if self.crop_size > self.model.sample_size:
            raise ValueError("crop_size must not exceed model.sample_size")
        if self.crop_size % 2 ** (len(self.model.block_out_channels) - 1):
            raise ValueError("crop_size must be divisible by 2^(levels - 1)")
        return self


class AutoencoderModelConfig(_Strict):
    """The face autoencoder's size; see :mod:`vigface.generator.autoencoder`."""

    block_out_channels: list[int] = Field([32, 64, 128], min_length=2, max_length=4)
    latent_channels: int = Field(4, ge=1, le=16)
    layers_per_block: int = Field(1, ge=1, le=3)
    norm_num_groups: int = Field(16, ge=1)
    mid_block_attention: bool = False

    @model_validator(mode="after")
    def _groups(self):
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every block_out_channels entry")
        return self


class TrainAutoencoderConfig(_Strict):
    """Everything ``vigface train-autoencoder`` needs besides the data, FR model and output."""

    model: AutoencoderModelConfig = AutoencoderModelConfig()
    sample_size: int = Field(112, ge=16, description="side of the faces it encodes")
    l1_weight: float = Field(1.0, ge=0, description="pixel L1")
    perceptual_weight: float = Field(
        0.5, ge=0, description="distance of the frozen FR backbone's unit-normalised feature maps"
    )
    identity_weight: float = Field(
        0.1, ge=0, description="1 - cos of the FR embeddings of a face and its reconstruction"
    )
    kl_weight: float = Field(1e-6, ge=0, description="KL of the posterior, summed per image")
    train_encoder: bool = Field(
        True, description="false: the decoder alone (the latent space, and generators in it, stay)"
    )
    flip: bool = True
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    max_steps: int = Field(100000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop (and save) after this long")
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    log_every: int = Field(20, ge=1)
    checkpoint_every_steps: int = Field(100, ge=1)
    threads: int | None = Field(None, ge=1)
    precision: Precision = Field("auto", description="autocast: bf16 where native (auto)")
