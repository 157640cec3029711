"""Stage 2 and its helpers: the DiT, its diffusion schedule, the upsampler and the face
autoencoder latent generators draw in."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vigface.config.strict import Strict
from vigface.precision import Precision


class DiTModelConfig(Strict):
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


class DiffusionConfig(Strict):
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["v_prediction", "sample"] = Field(
        "v_prediction", description="what the network predicts: v, or the clean image (JiT)"
    )
    resolution_shift: float = Field(
        1.0, gt=0, description="log-SNR moved by -2 log(k): k = side / 64 for large images"
    )


class TrainDiTConfig(Strict):
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
    autoencoder: str | None = Field(
        None,
        description="autoencoder folder or store entry: the DiT draws in its latent space "
        "(model.sample_size is the latent side, 28 for 112-px faces)",
    )
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="training timesteps: uniform, or t/T = sigmoid(N(0, 1))"
    )
    loss_weighting: Literal["none", "min_snr"] = Field(
        "none", description="per-sample weight of the denoising term: 1, or min-SNR-5"
    )
    identity_loss_images: int | None = Field(
        None, ge=1, description="at most this many samples per batch carry the identity term"
    )
    repa_weight: float = Field(
        0.0, ge=0, description="weight of the alignment of hidden tokens with FR feature maps"
    )
    repa_block: int = Field(2, ge=0, description="the block whose output tokens are aligned")
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


class UpsamplerModelConfig(Strict):
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


class TrainUpsamplerConfig(Strict):
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


class AutoencoderModelConfig(Strict):
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


class TrainAutoencoderConfig(Strict):
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
