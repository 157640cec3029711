"""Stage 2's training data: faces, their landmarks and the FR prototype of each, and how one
batch is put together (mirroring, heatmaps, the latent of a latent generator).

A latent generator trains on the autoencoder's latents of the faces and of their mirror
images, encoded once (the posterior mean, shifted and scaled as the sampler decodes them)
and kept in ``<run>/latents.pt`` beside the checkpoint, so a resumed leg does not encode
again. With representation alignment the FR backbone's feature maps of the same faces are
kept there too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vigface.config import TrainDiTConfig
from vigface.data import AlignedFaceFolder, DatasetError
from vigface.data.augment import to_model_input
from vigface.fr_model import FRModel
from vigface.generator.landmarks import CROP_SIZE, render_heatmaps
from vigface.pose import YAW_BINS, PoseBank

log = logging.getLogger(__name__)

# Mirror image: left/right eyes and mouth corners swap (insightface 5-point order).
FLIP_ORDER = [1, 0, 2, 4, 3]


def load_face_data(data_dir: Path, size: int, fr: FRModel, progress: bool):
    """Images at ``size``, landmarks (N, 5, 2) and the FR class row of each image."""
    ds = AlignedFaceFolder.scan(data_dir)
    if ds.landmarks_file is None:
        raise DatasetError(
            f"no landmarks CSV beside or inside {data_dir} (need <dir>_landmarks.csv)"
        )
    missing = [s.path.name for s in ds.samples if s.landmarks is None]
    if missing:
        raise DatasetError(
            f"{len(missing)} images have no landmarks in {ds.landmarks_file}, e.g. {missing[0]}"
        )
    images, rows = load_with_prototype_rows(ds, fr, size, progress)
    landmarks = np.stack([s.landmarks for s in ds.samples]).astype(np.float32)
    return images, landmarks, rows


def load_with_prototype_rows(ds: AlignedFaceFolder, fr: FRModel, size: int, progress: bool):
    """Images at ``size`` and the FR class row (prototype) of each; every identity of the
    folder must be one the FR model was trained on (stage 2 and the upsampler condition on
    those prototypes)."""
    row_of = {name: i for i, name in enumerate(fr.classes)}
    unknown = [c for c in ds.classes if c not in row_of]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} identities of {ds.root} have no prototype in the FR model "
            f"(e.g. {unknown[0]}): train on the stage-1 training identities"
        )
    images, labels = ds.load_array(size, progress=progress)
    return images, np.asarray([row_of[ds.classes[y]] for y in labels], dtype=np.int64)


def pose_balance_weights(landmarks: np.ndarray, alpha: float) -> torch.Tensor:
    """Per-image draw weights (count of images in its |yaw| bin)^-alpha, summing to 1. The
    generator turns faces less than asked where training faces are rare (LFW: 3 % of images
    beyond 35 degrees); this shows it those faces more often. |yaw| because flips mirror a
    face into the opposite bin anyway."""
    bins = np.abs(PoseBank.from_landmarks(landmarks).bins - YAW_BINS.index("frontal"))
    counts = np.bincount(bins)
    w = counts[bins].astype(np.float64) ** -alpha
    return torch.from_numpy(w / w.sum())


def epoch_order(n: int, seed: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch's image order: a seeded permutation, or ``n`` seeded weighted draws with
    replacement. A pure function of the seed, so a resumed run continues the same order."""
    g = torch.Generator().manual_seed(seed)
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def trainable_virtual_prototypes(fr: FRModel, cfg: TrainDiTConfig) -> torch.Tensor | None:
    """Unit rows of W_V that the virtual-identity term may use (all but the held-out tail)."""
    if cfg.virtual_identity_fraction == 0:
        return None
    count = fr.virtual_prototypes.shape[0] - cfg.virtual_identity_holdout
    if count <= 0:
        raise DatasetError(
            f"virtual_identity_fraction > 0 needs virtual prototypes: the FR model has "
            f"{fr.virtual_prototypes.shape[0]}, virtual_identity_holdout is "
            f"{cfg.virtual_identity_holdout}"
        )
    return F.normalize(fr.virtual_prototypes[:count].float(), dim=1)


@dataclass
class FaceSet:
    """The training set as the DiT sees it. Pixel generators keep uint8 faces and mirror a
    batch on the fly; latent generators keep both orientations' latents (a mirrored latent is
    not the latent of the mirrored face)."""

    images: torch.Tensor  # (N, S, S, 3) uint8, or (2, N, C, s, s) latents [plain, mirrored]
    landmarks: torch.Tensor  # (N, 5, 2) in 112-px crop pixels
    rows: torch.Tensor  # (N,) FR prototype row of each face
    size: int  # side the DiT works at (pixels, or the latent side)
    latent: bool = False
    repa: torch.Tensor | None = None  # (2, N, C, g, g) FR feature maps [plain, mirrored]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor, flip: torch.Tensor | None, device):
        """(x0, heatmaps, prototype rows, REPA targets or None) of images ``idx``, mirrored
        where ``flip`` is True."""
        flip = torch.zeros(len(idx), dtype=torch.bool) if flip is None else flip
        lms = self.landmarks[idx].clone()
        mirrored = lms[:, FLIP_ORDER].clone()
        mirrored[..., 0] = CROP_SIZE - mirrored[..., 0]
        lms = torch.where(flip[:, None, None], mirrored, lms)
        if self.latent:
            x0 = torch.where(flip[:, None, None, None], self.images[1][idx], self.images[0][idx])
        else:
            x0 = to_model_input(self.images[idx])
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        repa = None
        if self.repa is not None:
            repa = torch.where(flip[:, None, None, None], self.repa[1][idx], self.repa[0][idx])
            repa = repa.float().to(device)
        heat = render_heatmaps(lms.to(device), self.size)
        return x0.to(device), heat, self.rows[idx], repa


@torch.no_grad()
def encode_faces(images: np.ndarray, vae, fr: FRModel | None, batch_size: int = 64):
    """Latents (2, N, C, s, s) of the faces and their mirror images, and with ``fr`` the FR
    backbone's spatially normalised stage-3 feature maps of both (fp16), for alignment."""
    from vigface.generator.autoencoder import encode
    from vigface.training.dit_loss import spatially_normalised

    latents, feats = [[], []], [[], []]
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i : i + batch_size]))
        for k, view in enumerate((x, x.flip(-1))):
            latents[k].append(encode(vae, view).float())
            if fr is not None:
                side = fr.backbone.input_size
                small = F.interpolate(view, size=(side, side), mode="area")
                feats[k].append(spatially_normalised(fr.backbone.feature_maps(small)[-1]).half())
    z = torch.stack([torch.cat(v) for v in latents])
    return z, (torch.stack([torch.cat(v) for v in feats]) if fr is not None else None)


# the parts of an AutoencoderKL that map a face to its latent; the decoder is not among them
ENCODER_SIDE = ("encoder.", "quant_conv.")


def latent_space_digest(folder: Path) -> str:
    """What decides the latents: the encoder's weights and the config (with the latent's shift
    and scale), not the decoder, the card or the path diffusers records (``_name_or_path``).
    A leg that trains the decoder alone keeps the latent space, so the generators trained in
    it continue and the latents cached for them stay valid."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in config.items() if not k.startswith("_")},
                        sort_keys=True).encode())  # fmt: skip
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(p, framework="pt") as f:
            for key in sorted(k for k in f.keys() if k.startswith(ENCODER_SIDE)):
                t = f.get_tensor(key).float().contiguous()
                h.update(key.encode() + t.numpy().tobytes())
    return h.hexdigest()[:16]


def load_face_set(
    cfg: TrainDiTConfig, data_dir: Path, fr: FRModel, out_dir: Path, vae=None, progress=True
) -> FaceSet:
    """The training set for ``cfg``: pixels at the DiT's side, or (with an autoencoder) the
    latents of the 112-px faces, cached in ``out_dir/latents.pt``."""
    size = cfg.model.sample_size
    if vae is None:
        images, landmarks, rows = load_face_data(data_dir, size, fr, progress)
        return FaceSet(torch.from_numpy(images), torch.from_numpy(landmarks),
                       torch.from_numpy(rows), size)  # fmt: skip
    images, landmarks, rows = load_face_data(data_dir, CROP_SIZE, fr, progress)
    key = {
        "autoencoder": latent_space_digest(Path(cfg.autoencoder)),
        "data": str(data_dir),
        "images": len(images),
    }
    cache = out_dir / "latents.pt"
    stored = torch.load(cache, weights_only=False) if cache.is_file() else None
    fits = stored is not None and {k: stored["key"].get(k) for k in key} == key
    if not fits or (cfg.repa_weight > 0 and stored["repa"] is None):
        log.info("encoding %d faces (and their mirror images) into latents", len(images))
        z, feats = encode_faces(images, vae, fr if cfg.repa_weight > 0 else None)
        stored = {"key": {**key, "repa": feats is not None}, "latents": z, "repa": feats}
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(stored, cache)
    if stored["latents"].shape[-1] != size:
        raise DatasetError(
            f"model.sample_size is {size} but the autoencoder's latents are "
            f"{stored['latents'].shape[-1]} on a side"
        )
    repa = stored["repa"] if cfg.repa_weight > 0 else None
    return FaceSet(stored["latents"], torch.from_numpy(landmarks), torch.from_numpy(rows),
                   size, latent=True, repa=repa)  # fmt: skip
