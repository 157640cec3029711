"""Train the face autoencoder (:mod:`vigface.generator.autoencoder`) on aligned real faces.

Loss per batch of 112-px faces ``x`` and reconstructions ``x_hat = D(z)``, ``z ~ E(x)``:

    L = l1 |x_hat - x|_1  +  p * sum_l d(phi_l(x_hat), phi_l(x))
        + i * (1 - cos(f(x_hat), f(x)))  +  k * KL(E(x) || N(0, I))

* ``phi_l``: the frozen stage-1 FR backbone's feature maps (stem and first three stages),
  each unit-normalised over channels as LPIPS does, at the backbone's own input side and at
  112 px (stem and first stage): an FR model's features are what must survive the round trip,
  and no pretrained perceptual network can be downloaded here;
* ``f``: the same FR model's embedding: the identity a face carries must survive too;
* KL summed over the latent per image, with a small weight, as Stable Diffusion's
  autoencoder: it keeps the latent smooth enough for a diffusion model to draw in.

``train_encoder: false`` trains the decoder alone: the latent space, and any generator
trained in it, stays valid while the decoder's detail improves. The latent's mean and
standard deviation are measured at the end of every run and stored as ``shift_factor`` /
``scaling_factor`` unless the encoder was frozen (then they must not move).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from vigface.config import TrainAutoencoderConfig
from vigface.data import AlignedFaceFolder
from vigface.data.augment import to_model_input
from vigface.fr_model import FRModel
from vigface.generator.autoencoder import (
    build_autoencoder,
    latent_statistics,
    save_autoencoder,
)
from vigface.precision import autocast
from vigface.training.run import TrainingRun
from vigface.training.schedule import linear_warmup

log = logging.getLogger(__name__)


def unit_channels(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)


class FacePerceptualLoss(torch.nn.Module):
    """LPIPS-style distance through a frozen FR backbone (no learned per-channel weights)."""

    def __init__(self, fr: FRModel, full_res_stages: int = 1):
        super().__init__()
        self.embedder = fr.embedder
        self.backbone = fr.backbone
        self.full_res_stages = full_res_stages
        for p in self.embedder.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.embedder.eval()
        return self

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        side = self.backbone.input_size
        native = F.interpolate(x, size=(side, side), mode="area") if x.shape[-1] != side else x
        out = self.backbone.feature_maps(native, stages=3)
        if x.shape[-1] != side:
            out += self.backbone.feature_maps(x, stages=self.full_res_stages)
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor):
        """(perceptual distance, 1 - cosine of embeddings), each a batch mean."""
        with torch.no_grad():
            target = [unit_channels(m.float()) for m in self.maps(x)]
            f = F.normalize(self.embedder(x).float(), dim=1)
        dist = sum(
            (unit_channels(m.float()) - t).pow(2).sum(1).mean()
            for m, t in zip(self.maps(x_hat), target, strict=True)
        )
        f_hat = F.normalize(self.embedder(x_hat).float(), dim=1)
        return dist, (1 - (f_hat * f).sum(1)).mean()


def load_faces(data_dir: Path, size: int, progress: bool) -> torch.Tensor:
    """Every face of an aligned ImageFolder as (N, H, W, 3) uint8 (decoded once)."""
    images, _ = AlignedFaceFolder.scan(data_dir).load_array(size, progress=progress)
    return torch.from_numpy(images)


def autoencoder_card(cfg: TrainAutoencoderConfig, data_dir: Path, fr_dir: Path, step: int):
    return {
        "kind": "autoencoder",
        "train_data": str(data_dir),
        "fr_model": str(fr_dir),
        "sample_size": cfg.sample_size,
        "steps": int(step),
        "batch_size": cfg.batch_size,
        "losses": {
            "l1": cfg.l1_weight,
            "perceptual": cfg.perceptual_weight,
            "identity": cfg.identity_weight,
            "kl": cfg.kl_weight,
        },
        "train_encoder": cfg.train_encoder,
    }


def reconstruction_terms(vae, loss_fn, x, cfg: TrainAutoencoderConfig, device) -> tuple:
    """(weighted total, the terms) of one batch of faces ``x``."""
    with autocast(device, cfg.precision):
        post = vae.encode(x).latent_dist
        x_hat = vae.decode(post.sample()).sample.float()
        perceptual, identity = loss_fn(x_hat, x)
    terms = {
        "l1": (x_hat - x).abs().mean(),
        "perceptual": perceptual,
        "identity": identity,
        "kl": post.kl().float().mean(),
    }
    weights = {
        "l1": cfg.l1_weight,
        "perceptual": cfg.perceptual_weight,
        "identity": cfg.identity_weight,
        "kl": cfg.kl_weight if cfg.train_encoder else 0.0,
    }
    return sum(weights[k] * v for k, v in terms.items()), terms


def trained_parameters(vae: AutoencoderKL, cfg: TrainAutoencoderConfig) -> list:
    if not cfg.train_encoder:  # the latent space stays as it is
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    return [p for p in vae.parameters() if p.requires_grad]


def finish(vae, faces, g, cfg, data_dir, fr_dir, out_dir, run, step, init_from) -> None:
    """Measure the latent statistics (when the encoder trained), save the model and card."""
    vae.eval()
    if cfg.train_encoder:
        sample = to_model_input(faces[torch.randperm(len(faces), generator=g)[:2048]])
        mean, std = latent_statistics(vae, sample.to(vae.device))
        vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    card = {
        **autoencoder_card(cfg, data_dir, Path(fr_dir), step),
        "init_from": str(init_from) if init_from else None,
        **run.provenance(cfg.precision),
    }
    save_autoencoder(vae, out_dir / "autoencoder", card)
    (out_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2))


def train_autoencoder(
    cfg: TrainAutoencoderConfig,
    data_dir: str | Path,
    fr_dir: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> AutoencoderKL:
    """Train (or continue) an autoencoder in ``out_dir``; returns it, saved in
    ``out_dir/autoencoder`` with its ``card.json``. ``init_from``: an autoencoder folder whose
    weights start the run."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    fr = FRModel.load(fr_dir, device=device)
    faces = load_faces(data_dir, cfg.sample_size, progress)
    vae = build_autoencoder(sample_size=cfg.sample_size, **cfg.model.model_dump()).to(device)
    if init_from:  # weights and the latent statistics a generator may already depend on
        source = AutoencoderKL.from_pretrained(init_from)
        vae.load_state_dict(source.state_dict())
        vae.register_to_config(
            shift_factor=source.config.shift_factor, scaling_factor=source.config.scaling_factor
        )
    params = trained_parameters(vae, cfg)
    loss_fn = FacePerceptualLoss(fr).to(device)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = linear_warmup(opt, cfg.warmup_steps)
    run = TrainingRun(out_dir, {"vae": vae, "optimizer": opt, "scheduler": sched}, cfg.max_minutes)
    step = (run.resume(resume) or {}).get("step", 0)
    g = torch.Generator().manual_seed(cfg.seed + step)  # a resumed run draws fresh batches
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train-autoencoder", disable=not progress)
    sums: dict[str, float] = {}
    vae.train()
    with run.stop_on_signals():
        while step < cfg.max_steps:
            idx = torch.randint(len(faces), (cfg.batch_size,), generator=g)
            x = to_model_input(faces[idx]).to(device)
            if cfg.flip:
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss, terms = reconstruction_terms(vae, loss_fn, x, cfg, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            run.tick()
            if step % cfg.log_every == 0:
                run.log({"step": step, **{k: round(v / cfg.log_every, 5) for k, v in sums.items()}})
                sums = {}
            if step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps or run.out_of_time:
                run.checkpoint(step=step)
            if run.out_of_time:
                log.info(
                    "stopping at step %d: %s",
                    step,
                    run.stop_signal or f"max_minutes={cfg.max_minutes} reached",
                )
                break
    bar.close()
    finish(vae, faces, g, cfg, data_dir, fr_dir, out_dir, run, step, init_from)
    return vae
