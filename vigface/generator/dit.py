"""FaceDiT: a pixel-space diffusion transformer conditioned on identity, pose and time.

DiT (Peebles & Xie) with adaLN-Zero blocks, written as a diffusers ``ModelMixin`` so it saves
and loads with ``save_pretrained`` / ``from_pretrained``. diffusers supplies the patch
embedding, the timestep embedding, adaLN-Zero, attention and the feed-forward; this file only
wires the VIGFace conditions:

* identity: the FR prototype ``w`` (D = 512) through a two-layer MLP, **added** to the
  timestep embedding that drives every adaLN modulation. ``w = 0`` is the unconditional
  branch of classifier-free guidance, as in the paper;
* pose: five landmark heatmaps concatenated to the noisy image channels before patching;
  all-zero heatmaps are the pose-free branch of two-condition guidance;
* ``pose_embedding``: the five points also as coordinates, read back off the heatmaps
  (each heatmap's centre of mass) and added to the condition like the identity, so every
  block's modulation knows the pose, not only the few tokens that hold a landmark. Dropped
  (all-zero) heatmaps add nothing: the pose-free branch is unchanged;
* output: what the generator's scheduler says it predicts, the velocity ``v`` or the clean
  image (x-prediction, JiT), same shape as the image;
* ``patch_bottleneck``: JiT's bottleneck patch embedding, a linear map of each large pixel
  patch (14 x 14 x 8 values at 112 px) to a few dimensions before the hidden width, so the
  input layer does not grow with the patch.

The patch embedding is linear, so the landmarks' share of it (their slice of the patch
convolution, its bias and the position embedding) and the pose embedding do not depend on the
noisy image or the timestep: :meth:`FaceDiT.encode_pose` computes them once, in fp32, and the
sampler passes that :class:`PoseCondition` to every denoising step instead of re-convolving
the heatmaps 25 times (``docs/experiments/2026-12-06-sampler-pose-cache.md``). ``forward``
takes either the heatmaps or a :class:`PoseCondition`; the weights are the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn


class PoseCondition(NamedTuple):
    """What a batch's landmarks add to a forward, from :meth:`FaceDiT.encode_pose`.

    tokens: (B, N, E) the heatmaps' share of the patch embedding, with its bias and the
    position embedding; embedding: (B, hidden) the pose embedding, or ``None`` for a model
    without one.
    """

    tokens: torch.Tensor
    embedding: torch.Tensor | None

    def head(self, n: int) -> PoseCondition:
        """The first ``n`` rows (the conditional part of a guided batch)."""
        emb = None if self.embedding is None else self.embedding[:n]
        return PoseCondition(self.tokens[:n], emb)


class DiTBlock(nn.Module):
    """Self-attention + MLP, each gated and modulated by adaLN-Zero from the condition."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=emb)
        x = x + gate_msa[:, None] * self.attn(h)
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class FaceDiT(ModelMixin, ConfigMixin):
    """``forward(x_t, t, identity, landmarks) -> v``.

    Args:
        sample_size: image side in pixels.
        patch_size: side of a square patch (tokens = (sample_size / patch_size)^2).
        hidden_size, depth, num_heads, mlp_ratio: transformer size (DiT-S: 384/12/6).
        identity_dim: dimension of the FR prototype.
        landmark_channels: heatmap channels concatenated to the input (5 points).
        patch_bottleneck: width of JiT's bottleneck patch embedding (None: none).
        pose_embedding: add the landmark coordinates to the condition (see module doc).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 3,
        landmark_channels: int = 5,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        identity_dim: int = 512,
        patch_bottleneck: int | None = None,
        pose_embedding: bool = False,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels + landmark_channels,
            embed_dim=patch_bottleneck or hidden_size,
        )
        self.patch_proj = (
            nn.Linear(patch_bottleneck, hidden_size) if patch_bottleneck else nn.Identity()
        )
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.identity_embed = nn.Sequential(
            nn.Linear(identity_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.pose_embed = (
            nn.Sequential(
                nn.Linear(2 * landmark_channels, hidden_size),
                nn.SiLU(),
                nn.Linear(hidden_size, hidden_size),
            )
            if pose_embedding
            else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm_out = AdaLayerNormContinuous(
            hidden_size, hidden_size, elementwise_affine=False, eps=1e-6
        )
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # adaLN-Zero: every residual branch and the output start at zero, so the untrained
        # network is the identity map on its residual stream (DiT section 3.2).
        for block in self.blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        nn.init.zeros_(self.norm_out.linear.weight)
        nn.init.zeros_(self.norm_out.linear.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        if self.pose_embed is not None:
            # starts as "no pose" so a warm start from a model without it is unchanged
            nn.init.zeros_(self.pose_embed[-1].weight)
            nn.init.zeros_(self.pose_embed[-1].bias)

    def condition(self, timestep: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        t = self.time_embed(self.time_proj(timestep).to(identity.dtype))
        return t + self.identity_embed(identity)

    def pose_condition(self, landmarks: torch.Tensor) -> torch.Tensor:
        """(B, K, S, S) heatmaps in [-1, 1] -> (B, hidden): each map's centre of mass in
        [-1, 1] coordinates through the pose MLP; zero for all-zero (dropped) heatmaps."""
        heat = (landmarks.float() + 1) / 2
        s = heat.shape[-1]
        grid = (torch.arange(s, device=heat.device, dtype=heat.dtype) + 0.5) / s * 2 - 1
        mass = heat.sum((-2, -1)).clamp_min(1e-6)
        x = (heat.sum(-2) * grid).sum(-1) / mass
        y = (heat.sum(-1) * grid).sum(-1) / mass
        coords = torch.stack([x, y], -1).flatten(1)  # (B, 2K)
        present = landmarks.flatten(1).abs().amax(1, keepdim=True) > 0
        return self.pose_embed(coords.to(landmarks.dtype)) * present.to(landmarks.dtype)

    def encode_pose(self, landmarks: torch.Tensor) -> PoseCondition:
        """(B, 5, S, S) heatmaps -> their part of every forward, in fp32 (outside autocast).
        The sampler computes it once per batch, so there its precision costs nothing; in
        training it runs every step, a 5-channel convolution beside the image's 3."""
        embed = self.patch_embed
        c = self.config.in_channels
        with torch.autocast(landmarks.device.type, enabled=False):
            heat = landmarks.float()
            tokens = (
                F.conv2d(
                    heat,
                    embed.proj.weight[:, c:].float(),
                    embed.proj.bias.float(),
                    stride=self.config.patch_size,
                )
                .flatten(2)
                .transpose(1, 2)
            )
            if embed.pos_embed is not None:
                tokens = tokens + embed.pos_embed.float()
            emb = self.pose_condition(heat) if self.pose_embed is not None else None
        return PoseCondition(tokens, emb)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        identity: torch.Tensor,
        landmarks: torch.Tensor | PoseCondition,
    ) -> torch.Tensor:
        """sample (B, 3, S, S); timestep (B,); identity (B, D); landmarks (B, 5, S, S)
        heatmaps or their :class:`PoseCondition`."""
        b, c, s, _ = sample.shape
        p = self.config.patch_size
        pose = landmarks if isinstance(landmarks, PoseCondition) else self.encode_pose(landmarks)
        x = F.conv2d(sample, self.patch_embed.proj.weight[:, :c], stride=p)
        x = x.flatten(2).transpose(1, 2)
        x = self.patch_proj((x + pose.tokens).to(x.dtype))
        emb = self.condition(timestep, identity.to(sample.dtype))
        if pose.embedding is not None:
            emb = emb + pose.embedding.to(emb.dtype)
        for block in self.blocks:
            x = block(x, emb)
        x = self.proj_out(self.norm_out(x, emb))
        g = s // p
        x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, s, s)
