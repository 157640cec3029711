"""A complete generator: the model-store entry that datasets are sampled from.

::

    <entry>/model_card.json     kind "generator", measured numbers, how it was made
    <entry>/fr/                 the stage-1 FR artifact (prototypes live here)
    <entry>/dit/                FaceDiT.save_pretrained (EMA weights)
    <entry>/scheduler/          the training DDPMScheduler config
    <entry>/pose_landmarks.npy  (N, 5, 2) training landmarks in 112-px crop pixels: the poses
                                the generator has seen (no pixels of any face)
    <entry>/upsampler/          optional cascade stage, 32 -> 64 px
                                (vigface/generator/upsampler.py)
    <entry>/autoencoder/        a latent generator's face autoencoder (AutoencoderKL
                                save_pretrained + card.json): the DiT draws its latents and
                                the sampler decodes them (vigface/generator/autoencoder.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from safetensors.torch import save_file

from vigface.fr_model import FRModel, ModelFormatError
from vigface.generator.autoencoder import (
    AUTOENCODER_DIR,
    latent_factor,
    load_autoencoder,
    save_autoencoder,
)
from vigface.generator.dit import FaceDiT
from vigface.generator.upsampler import UpsamplerStage
from vigface.model_card import load_card, write_card
from vigface.pose import PoseBank

POSES_FILE = "pose_landmarks.npy"
UPSAMPLER_DIR = "upsampler"


@dataclass
class Generator:
    dit: FaceDiT
    scheduler: DDPMScheduler
    fr: FRModel
    card: dict = field(default_factory=dict)
    pose_landmarks: np.ndarray | None = None
    upsampler: UpsamplerStage | None = None
    autoencoder: AutoencoderKL | None = None
    path: Path | None = None  # the entry it was loaded from

    @property
    def output_size(self) -> int:
        """Side of the faces it draws: the upsampler's when it has one, the decoder's for a
        latent generator."""
        if self.upsampler:
            return self.upsampler.size
        if self.autoencoder is not None:
            return self.dit.config.sample_size * latent_factor(self.autoencoder)
        return self.dit.config.sample_size

    @cached_property
    def pose_bank(self) -> PoseBank | None:
        """The training poses binned by yaw, fitted once per loaded entry (a fit of a few
        thousand landmark sets, which orders, spares and calibration all read)."""
        return None if self.pose_landmarks is None else PoseBank.from_landmarks(self.pose_landmarks)

    def save(self, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the entry; ``dtype=torch.float16`` stores the DiT and the prototypes in half
        precision (bundled models), loading always returns float32."""
        out = Path(out)
        if dtype == torch.float32:
            self.dit.save_pretrained(out / "dit")
        else:  # same files as save_pretrained, weights cast on the way out
            (out / "dit").mkdir(parents=True, exist_ok=True)
            self.dit.save_config(out / "dit")
            state = {k: v.detach().to(dtype).contiguous() for k, v in self.dit.state_dict().items()}
            save_file(state, out / "dit" / "diffusion_pytorch_model.safetensors")
        self.scheduler.save_pretrained(out / "scheduler")
        self.fr.save(out / "fr", prototype_dtype=dtype)
        if self.pose_landmarks is not None:
            np.save(out / POSES_FILE, np.asarray(self.pose_landmarks, np.float32))
        if self.upsampler is not None:
            self.upsampler.save(out / UPSAMPLER_DIR, dtype=dtype)
        if self.autoencoder is not None:
            save_autoencoder(self.autoencoder, out / AUTOENCODER_DIR, self.card.get("autoencoder"))
        write_card(out, self.card)
        return out

    @classmethod
    def load(cls, entry: str | Path, device: str | torch.device = "cpu") -> Generator:
        entry = Path(entry)
        for part in ("dit", "scheduler", "fr"):
            if not (entry / part).is_dir():
                raise ModelFormatError(f"{entry} is not a generator entry: missing {part}/")
        # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, said
        # deliberately so that every load does not print the "install accelerate" warning
        dit = FaceDiT.from_pretrained(
            entry / "dit", torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
        dit = dit.to(device).eval()
        scheduler = DDPMScheduler.from_pretrained(entry / "scheduler")
        fr = FRModel.load(entry / "fr", device=device)
        card = load_card(entry)
        poses = np.load(entry / POSES_FILE) if (entry / POSES_FILE).is_file() else None
        up = entry / UPSAMPLER_DIR
        upsampler = UpsamplerStage.load(up, device=device) if up.is_dir() else None
        ae = entry / AUTOENCODER_DIR
        autoencoder = load_autoencoder(ae, device) if ae.is_dir() else None
        return cls(
            dit=dit, scheduler=scheduler, fr=fr, card=card, pose_landmarks=poses,
            upsampler=upsampler, autoencoder=autoencoder, path=entry,
        )  # fmt: skip
