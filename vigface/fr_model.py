"""The stage-1 artifact: an FR backbone with its real and virtual identity prototypes.

On disk (a model-store entry, or the ``fr/`` part of one)::

    backbone.safetensors   IResNet weights (arcface_torch parameter names)
    prototypes.safetensors real (n, D) = W_R, virtual (k, D) = W_V, sigma (D,)
    classes.json           the n real identity names, row order of W_R
    config.yaml            the TrainFRConfig it was trained with
    model_card.json        measured numbers (dev accuracy, orthogonality, training time)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from vigface.backbones import AlignedCropEmbedder, IResNet, build_backbone
from vigface.config import TrainFRConfig
from vigface.prototype_set import prototype_set_digest

BACKBONE_FILE = "backbone.safetensors"
PROTOTYPES_FILE = "prototypes.safetensors"
CLASSES_FILE = "classes.json"
CONFIG_FILE = "config.yaml"
CARD_FILE = "model_card.json"


class ModelFormatError(ValueError):
    """A model folder is missing files or holds inconsistent tensors."""


@dataclass
class FRModel:
    config: TrainFRConfig
    backbone: IResNet
    real_prototypes: torch.Tensor  # (n, D), not normalised
    virtual_prototypes: torch.Tensor  # (k, D)
    sigma: torch.Tensor  # (D,)
    classes: list[str]
    card: dict = field(default_factory=dict)

    @property
    def embedder(self) -> AlignedCropEmbedder:
        """The backbone taking 112x112 aligned crops in [-1, 1]."""
        return AlignedCropEmbedder(self.backbone).eval()

    def save(self, out_dir: str | Path, prototype_dtype: torch.dtype = torch.float32) -> Path:
        """Write the artifact; ``prototype_dtype=torch.float16`` halves the prototype file
        (cosines change by < 1e-3) for bundled models, loads always return float32."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        save_file(state, out / BACKBONE_FILE)
        save_file(
            {
                "real": self.real_prototypes.detach().cpu().to(prototype_dtype).contiguous(),
                "virtual": self.virtual_prototypes.detach().cpu().to(prototype_dtype).contiguous(),
                "sigma": self.sigma.detach().cpu().float().contiguous(),
            },
            out / PROTOTYPES_FILE,
        )
        (out / CLASSES_FILE).write_text(json.dumps(self.classes))
        stored = self.virtual_prototypes.detach().cpu().to(prototype_dtype).float().numpy()
        self.card["prototype_set"] = prototype_set_digest(stored)
        (out / CONFIG_FILE).write_text(yaml.safe_dump(self.config.model_dump(), sort_keys=False))
        self.save_card(out)
        return out

    def save_card(self, out_dir: str | Path) -> None:
        (Path(out_dir) / CARD_FILE).write_text(json.dumps(self.card, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> FRModel:
        d = Path(model_dir)
        missing = [
            f
            for f in (BACKBONE_FILE, PROTOTYPES_FILE, CLASSES_FILE, CONFIG_FILE)
            if not (d / f).is_file()
        ]
        if missing:
            raise ModelFormatError(f"{d} is not an FR model folder: missing {', '.join(missing)}")
        config = TrainFRConfig.model_validate(yaml.safe_load((d / CONFIG_FILE).read_text()))
        backbone = build_backbone(config.backbone)
        backbone.load_state_dict(load_file(d / BACKBONE_FILE))
        backbone.to(device).eval()
        protos = load_file(d / PROTOTYPES_FILE)
        classes = json.loads((d / CLASSES_FILE).read_text())
        if protos["real"].shape[0] != len(classes):
            raise ModelFormatError(
                f"{d}: {protos['real'].shape[0]} real prototypes for {len(classes)} class names"
            )
        card = json.loads((d / CARD_FILE).read_text()) if (d / CARD_FILE).is_file() else {}
        return cls(
            config=config,
            backbone=backbone,
            real_prototypes=protos["real"].float().to(device),
            virtual_prototypes=protos["virtual"].float().to(device),
            sigma=protos["sigma"].float().to(device),
            classes=classes,
            card=card,
        )

    @torch.inference_mode()
    def embed(self, images: np.ndarray | torch.Tensor, batch_size: int = 256, flip: bool = True):
        """L2-normalised embeddings of (N, H, W, 3) uint8 RGB aligned crops.

        With ``flip`` the embedding is that of the image plus that of its mirror image, as
        insightface's verification protocol does.
        """
        from vigface.data.augment import to_model_input

        emb = self.embedder
        device = next(self.backbone.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.as_tensor(np.asarray(images[i : i + batch_size])).to(device)
            x = to_model_input(batch)
            f = emb(x)
            if flip:
                f = f + emb(x.flip(-1))
            out.append(F.normalize(f.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.real_prototypes.shape[1])
