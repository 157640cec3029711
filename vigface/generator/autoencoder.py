"""The face autoencoder that latent generators draw in: 112-px aligned crops <-> 28 x 28 x c.

Why: a small transformer writing 14-px pixel patches leaves its patch grid in every face
(jit112's seam ratio 2.16 against 0.98 on real faces). Here convolutions write the detail, so
there is no grid, and the transformer only places 49 or 196 latent tokens. The model is
diffusers' ``AutoencoderKL`` (factor 4: two stride-2 stages), so it saves and loads with
``save_pretrained`` / ``from_pretrained`` like every other part of an entry.

A generator entry that draws in latent space carries it under ``autoencoder/``. The
generator's diffusion sees ``(z - shift_factor) * scaling_factor``, the latent mean shifted
and scaled to unit variance on the training faces (measured once after training,
:func:`latent_statistics`); :func:`encode` and :func:`decode` apply and undo that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

AUTOENCODER_DIR = "autoencoder"


def build_autoencoder(
    block_out_channels: tuple[int, ...] = (32, 64, 128),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    norm_num_groups: int = 16,
    sample_size: int = 112,
    mid_block_attention: bool = False,
) -> AutoencoderKL:
    """A KL autoencoder downsampling by ``2 ** (len(block_out_channels) - 1)``. No attention
    by default: faces are aligned, the receptive field of the convolutions covers the
    structure that matters, and attention at 28 x 28 would be the costliest layer on a CPU."""
    levels = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=mid_block_attention,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def latent_factor(vae: AutoencoderKL) -> int:
    """How much smaller the latent's side is than the face's."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def save_autoencoder(vae: AutoencoderKL, folder: Path, card: dict | None = None) -> None:
    vae.save_pretrained(folder)
    if card is not None:
        (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def load_autoencoder(folder: Path, device="cpu") -> AutoencoderKL:
    # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, said
    # deliberately so that every load does not print the "install accelerate" warning
    vae = AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False)
    return vae.to(device).eval().requires_grad_(False)


def encode(vae: AutoencoderKL, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the generator's latent: the posterior mean (or a draw),
    shifted and scaled to unit variance."""
    dist = vae.encode(x).latent_dist
    z = dist.sample() if sample else dist.mean
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """The generator's latent -> (B, 3, H, W) image in [-1, 1] (not clamped)."""
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z).sample


class LatentDecoder(torch.nn.Module):
    """The decoder as a module of its own (frozen by whoever holds it): the generator's
    latent -> a face in [-1, 1]."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, z)


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, x: torch.Tensor, batch_size: int = 64):
    """(mean, std) of the raw posterior means over images ``x``: the shift and inverse scale
    the generator's latents are normalised by."""
    zs = [vae.encode(x[i : i + batch_size]).latent_dist.mean for i in range(0, len(x), batch_size)]
    z = torch.cat(zs).float()
    return float(z.mean()), float(z.std())
