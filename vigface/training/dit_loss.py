"""The stage-2 objective: what one training batch of the DiT costs.

Loss per sample (DDPMScheduler noising; ``x`` the image, or its autoencoder latent for a
latent generator):

    L = w_t |v_hat - v|^2  +  lambda * omega_t * 1[alpha_bar_t >= a_min] * |f(D(x0_hat)) - w|^2

* ``w`` is the unit FR prototype of the image's identity, replaced by zeros with probability
  ``cond_drop_prob`` (0.1) to learn the unconditional branch for CFG; the landmarks are
  dropped apart from it with ``pose_drop_prob`` (two-condition guidance);
* ``x0_hat`` is the clean sample the network's output implies; ``D`` the autoencoder's decoder
  (identity for a pixel generator); ``f`` the frozen FR model (gradients reach the DiT only);
* ``lambda`` is ``identity_loss_weight``; ``omega_t`` is ``alpha_bar_t`` (``alpha_bar``, the
  paper-like default) or 1 (``uniform``); below ``a_min`` the term is not computed; at most
  ``identity_loss_images`` samples per batch carry it (decoding is what it costs);
* ``w_t`` is 1, or min-SNR-gamma's ``min(SNR_t, 5) / (SNR_t + 1)`` (Hang et al. 2023) with
  ``loss_weighting: min_snr``; timesteps are uniform or logit-normal (``timestep_sampling``,
  SD3's choice: the middle of the noise range, where the image is decided, drawn more).

The paper's objective is the first two terms with uniform timesteps and ``w_t = 1``. The rest
is this project's, off in the paper's configs:

* margin term (``identity_margin_weight``): a face nearer its own prototype than any other
  real one by a margin; ``identity_augment`` flips and shifts ``x0_hat`` before ``f``;
* virtual-prototype term (``virtual_identity_fraction``): rows of W_V rendered from noise
  with a short differentiable DDIM unroll (DRaFT), pulled to their prototypes;
* representation alignment (``repa_weight``, REPA: Yu et al. 2025; iREPA's convolutional
  projector and spatially normalised targets): the hidden tokens of block ``repa_block``,
  through a small convolutional projector, match the frozen FR backbone's feature map of the
  clean image at the token grid (``1 - cos`` per token). The FR model already knows faces;
  this hands that structure to a transformer that would otherwise learn it from 10k images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigface.config import TrainDiTConfig
from vigface.generator.diffusion import (
    MIN_NOISE_STD,
    cfg_combine,
    ddim_step,
    predict_x0,
    signal_fraction,
    to_velocity,
    velocity_loss_target,
)
from vigface.generator.dit import FaceDiT

MIN_SNR_GAMMA = 5.0


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


def denoising_loss(
    v_hat: torch.Tensor, v_true: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's diffusion term: mean squared error of the predicted velocity (per sample
    weighted by ``weight`` when given)."""
    per = (v_hat.float() - v_true.float()).pow(2).flatten(1).mean(1)
    return per.mean() if weight is None else (weight * per).mean()


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


def sample_timesteps(b: int, total: int, kind: str, device) -> torch.Tensor:
    """Training timesteps: uniform, or ``t / T = sigmoid(n)``, ``n ~ N(0, 1)`` (logit-normal)."""
    if kind == "logit_normal":
        u = torch.sigmoid(torch.randn(b, device=device))
        return (u * total).long().clamp(0, total - 1)
    return torch.randint(0, total, (b,), device=device)


def min_snr_weight(scheduler, t: torch.Tensor) -> torch.Tensor:
    """min-SNR-gamma for a velocity loss: ``min(SNR, gamma) / (SNR + 1)``."""
    abar = signal_fraction(scheduler, t)
    snr = abar / (1 - abar).clamp_min(1e-8)
    return snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)


def spatially_normalised(f: torch.Tensor) -> torch.Tensor:
    """iREPA's target normalisation: each channel minus its mean over the map, over its std:
    what is the same at every position (lighting, the average face) carries no layout."""
    mu = f.mean((-2, -1), keepdim=True)
    sd = f.std((-2, -1), keepdim=True).clamp_min(1e-6)
    return (f - mu) / sd


class TokenProjector(nn.Module):
    """Hidden tokens on their grid -> the FR feature map's channels (conv 3x3, SiLU, conv 1x1):
    iREPA's convolutional projector, which keeps neighbouring tokens' layout."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, out_channels, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        g = int(round(n**0.5))
        return self.net(tokens.transpose(1, 2).reshape(b, c, g, g))


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between projected tokens and the target feature map, per position."""
    if projected.shape[-1] != target.shape[-1]:
        target = F.adaptive_avg_pool2d(target, projected.shape[-2:])
    return (1 - F.cosine_similarity(projected.float(), target.float(), dim=1)).mean()


class DiTLoss(nn.Module):
    """The stage-2 objective for one batch; holds the DiT (trained), the FR model (frozen),
    the decoder of a latent generator (frozen) and the REPA projector (trained, not saved
    with the generator)."""

    def __init__(
        self,
        dit: FaceDiT,
        fr_embedder: nn.Module,
        scheduler,
        cfg: TrainDiTConfig,
        real_prototypes: torch.Tensor | None = None,
        decoder=None,
        repa_channels: int | None = None,
    ):
        super().__init__()
        self.dit, self.scheduler, self.cfg = dit, scheduler, cfg
        self.fr, self.decoder = fr_embedder, decoder
        # unit rows of W_R: the negatives of the margin term
        self.register_buffer("real_prototypes", real_prototypes, persistent=False)
        for frozen in (self.fr, self.decoder):
            if isinstance(frozen, nn.Module):
                frozen.requires_grad_(False)
        self.projector = None
        if cfg.repa_weight > 0:
            self.projector = TokenProjector(dit.config.hidden_size, repa_channels)
            self._hidden = None
            dit.blocks[cfg.repa_block].register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, _module, _inputs, output) -> None:
        self._hidden = output

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.fr, self.decoder):
            if isinstance(frozen, nn.Module):
                frozen.eval()  # BatchNorm statistics and dropout stay in inference mode
        return self

    def to_pixels(self, x0: torch.Tensor) -> torch.Tensor:
        """A clean sample as a face in [-1, 1] (decoded first for a latent generator)."""
        if self.decoder is not None:
            x0 = self.decoder(x0)
        return x0.clamp(-1, 1)

    def embed(self, x0: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = self.to_pixels(x0)
        return F.normalize(self.fr(augment_for_fr(x) if augment else x).float(), dim=1)

    def forward(self, x0, heat, identity, virtual=None, repa_target=None):
        """``identity``: (B, D) unit prototypes of the images; ``virtual``: (V, D) unit rows
        of W_V for the virtual-prototype term (or None); ``repa_target``: (B, C, g, g) the FR
        feature maps of the clean images (with ``repa_weight``). Returns the total and a dict
        of its terms, detached for logging."""
        cfg, b, device = self.cfg, x0.shape[0], x0.device
        noise = torch.randn_like(x0)
        total_t = self.scheduler.config.num_train_timesteps
        t = sample_timesteps(b, total_t, cfg.timestep_sampling, device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        keep = (torch.rand(b, device=device) >= cfg.cond_drop_prob).float()  # CFG: drop w
        if cfg.pose_drop_prob > 0:  # the pose-free branch of two-condition guidance
            keep_pose = (torch.rand(b, device=device) >= cfg.pose_drop_prob).to(heat.dtype)
            heat = heat * keep_pose[:, None, None, None]
        out = self.dit(x_t, t, identity * keep[:, None], heat)
        v_hat = to_velocity(self.scheduler, x_t, out.float(), t, MIN_NOISE_STD)
        weight = min_snr_weight(self.scheduler, t) if cfg.loss_weighting == "min_snr" else None
        v_true = velocity_loss_target(self.scheduler, x_t, x0, noise, t)
        terms = {"v_loss": denoising_loss(v_hat, v_true, weight)}
        total = terms["v_loss"]
        if cfg.identity_loss_weight > 0:
            terms["id_loss"] = self.identity_term(x_t, out, t, keep, identity)
            total = total + cfg.identity_loss_weight * terms["id_loss"]
        n_virtual = round(b * cfg.virtual_identity_fraction) if virtual is not None else 0
        if n_virtual:
            w_v = virtual[torch.randint(0, len(virtual), (n_virtual,), device=device)]
            pose = heat[torch.randint(0, b, (n_virtual,), device=device)]
            x0_v = self.render(w_v, pose, cfg.virtual_identity_steps, cfg.virtual_identity_guidance)
            terms["virtual_id_loss"] = identity_loss(self.embed(x0_v), w_v).mean()
            total = total + cfg.virtual_identity_weight * terms["virtual_id_loss"]
        if self.projector is not None and repa_target is not None:
            terms["repa_loss"] = alignment_loss(self.projector(self._hidden), repa_target)
            total = total + cfg.repa_weight * terms["repa_loss"]
        return total, {k: v.detach() for k, v in terms.items()}

    def identity_term(self, x_t, out, t, keep, identity) -> torch.Tensor:
        """The identity term (and the margin term), summed over the samples that carry it and
        divided by the conditioned samples in the batch."""
        cfg = self.cfg
        abar = signal_fraction(self.scheduler, t)
        omega = abar if cfg.identity_loss_weighting == "alpha_bar" else torch.ones_like(abar)
        use = ((keep > 0) & (abar >= cfg.identity_loss_min_alpha_bar)).nonzero().flatten()
        eligible = len(use)
        if cfg.identity_loss_images is not None:
            use = use[torch.randperm(len(use), device=use.device)[: cfg.identity_loss_images]]
        if len(use) == 0:
            return torch.zeros((), device=x_t.device)
        x0_hat = predict_x0(self.scheduler, x_t[use], out[use].float(), t[use])
        f = self.embed(x0_hat, augment=cfg.identity_augment)
        per_image = identity_loss(f, identity[use])
        if cfg.identity_margin_weight > 0:
            per_image = per_image + cfg.identity_margin_weight * margin_term(
                f, identity[use], self.real_prototypes, cfg.identity_margin
            )
        scale = eligible / len(use)  # a subset stands for every eligible sample
        return (omega[use] * per_image).sum() * scale / keep.sum().clamp_min(1)

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
        s, c = self.dit.config.sample_size, self.dit.config.in_channels
        x = torch.randn(len(w), c, s, s, device=w.device)
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
