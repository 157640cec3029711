"""The cascade's second stage: a diffusion super-resolution model, 32-px faces to 64 px.

Why a cascade: the DiT draws 32 px because that is what two CPU cores can train, and FR teams
train at 112 px. A pixel model at 64 px costs four times the tokens; super-resolution is a
local problem, so a small convolutional network trained on crops (a quarter of the pixels)
learns it for a fraction of that (Saharia et al., SR3; Ho et al., cascaded diffusion).

What it learns: the detail that box-downsampling to 32 px removed, as a residual over the
bicubic upsampling of the 32-px image, ``x_hr = up(x_lr) + s * r`` (``s`` =
``residual_scale``, the residual's std on the training set, so the diffusion sees unit
variance). The denoiser is diffusers' ``UNet2DModel`` without attention (fully convolutional,
so it runs on the whole 64-px face after training on crops) with ``up(x_lr)`` concatenated
to the noisy residual; the FR prototype ``w`` of the face's identity enters through the
UNet's class embedding, added to the timestep embedding, so the added detail can follow the
identity rather than an average face. Training noises the 32-px input a little
(``cond_noise_max``, SR3's conditioning augmentation) so the generated 32-px faces, which are
not exactly downsampled photographs, still upsample cleanly.

Entry layout (``<generator entry>/upsampler/``)::

    model/        FaceUpsampler.save_pretrained (EMA weights)
    scheduler/    its DDPMScheduler config (v-prediction)
    card.json     how it was trained and what it measured
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import save_file
from torch import nn

from vigface.generator.diffusion import sampling_scheduler
from vigface.precision import autocast


def upsample_input(low: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, s, s) in [-1, 1] -> bicubic (B, 3, size, size): the conditioning and the base
    the residual is added to (the writer's own PIL bicubic differs only by rounding)."""
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


class FaceUpsampler(ModelMixin, ConfigMixin):
    """``forward(r_t, t, identity, base) -> v`` for the residual ``r`` over ``base = up(x_lr)``.

    Args:
        low_size: side of the input faces (the DiT's sample_size).
        sample_size: side of the output faces (an integer multiple is not required).
        block_out_channels: UNet widths per level (every level but the last halves the side).
        layers_per_block: ResNet blocks per level.
        norm_num_groups: GroupNorm groups (must divide every width).
        identity_dim: dimension of the FR prototype.
        residual_scale: std of ``x_hr - up(x_lr)`` on the training set.
    """

    @register_to_config
    def __init__(
        self,
        low_size: int = 32,
        sample_size: int = 64,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        identity_dim: int = 512,
        residual_scale: float = 0.1,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=6,
            out_channels=3,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=False,  # fully convolutional: trained on crops, run on whole faces
            class_embed_type="identity",
            norm_num_groups=norm_num_groups,
        )
        time_dim = block_out_channels[0] * 4
        self.identity_embed = nn.Sequential(
            nn.Linear(identity_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        nn.init.zeros_(self.identity_embed[2].weight)  # starts as the unconditional model
        nn.init.zeros_(self.identity_embed[2].bias)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, identity: torch.Tensor,
        base: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """sample (B, 3, H, W) noisy residual; timestep (B,); identity (B, D); base (B, 3, H, W)."""
        cond = self.identity_embed(identity.to(sample.dtype))
        x = torch.cat([sample, base.to(sample.dtype)], dim=1)
        return self.unet(x, timestep, class_labels=cond).sample


@dataclass
class UpsamplerStage:
    """A trained upsampler with its noise schedule and card: what a generator entry carries
    under ``upsampler/`` and what :meth:`upsample` runs after the DiT."""

    model: FaceUpsampler
    scheduler: DDPMScheduler
    card: dict = field(default_factory=dict)

    @property
    def low_size(self) -> int:
        return self.model.config.low_size

    @property
    def size(self) -> int:
        return self.model.config.sample_size

    def save(self, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        out = Path(out)
        if dtype == torch.float32:
            self.model.save_pretrained(out / "model")
        else:  # bundled entries: half-precision weights, loading returns float32
            (out / "model").mkdir(parents=True, exist_ok=True)
            self.model.save_config(out / "model")
            state = {
                k: v.detach().to(dtype).contiguous() for k, v in self.model.state_dict().items()
            }
            save_file(state, out / "model" / "diffusion_pytorch_model.safetensors")
        self.scheduler.save_pretrained(out / "scheduler")
        (out / "card.json").write_text(json.dumps(self.card, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> UpsamplerStage:
        folder = Path(folder)
        model = FaceUpsampler.from_pretrained(
            folder / "model", torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        card_file = folder / "card.json"
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        return cls(model=model.to(device).eval(), scheduler=scheduler, card=card)

    @torch.inference_mode()
    def upsample(
        self,
        low: torch.Tensor,
        identity: torch.Tensor,
        noise: torch.Tensor,
        steps: int = 8,
        scheduler: str = "dpmsolver",
        precision: str = "auto",
    ) -> torch.Tensor:
        """(B, 3, low, low) in [-1, 1] + unit prototypes (B, D) + starting noise
        (B, 3, size, size) -> (B, 3, size, size) in [-1, 1]. Deterministic given the noise."""
        device = next(self.model.parameters()).device
        base = upsample_input(low.float().to(device), self.size)
        sched = sampling_scheduler(self.scheduler, scheduler)
        sched.set_timesteps(steps, device=device)
        r = noise.to(device) * sched.init_noise_sigma
        w = identity.float().to(device)
        for t in sched.timesteps:
            with autocast(device, precision):
                v = self.model(sched.scale_model_input(r, t), t.expand(len(r)), w, base).float()
            r = sched.step(v, t, r).prev_sample
        return (base + self.model.config.residual_scale * r).clamp(-1, 1)
