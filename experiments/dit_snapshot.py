"""A generator entry from a stage-2 checkpoint (``checkpoints/last.pt`` or a copy of it taken
while the run goes on), to measure a run at several training times without stopping it.

The entry holds the checkpoint's EMA weights, the scheduler the config describes, the stage-1
model and the training poses (landmarks only), as ``vigface train-dit`` writes at the end; its
card records the checkpoint's step and elapsed minutes. Filters are not calibrated: measure
with the judge and the pose bench, or run ``vigface calibrate`` on it before ordering from it.

    cp runs/jit112/checkpoints/last.pt runs/jit112_snap.pt      # while training runs
    python experiments/dit_snapshot.py --config vigface/configs/dit_lfw112_jit.yaml \\
        --checkpoint runs/jit112_snap.pt --data ../shared/data/lfw112/train \\
        --fr model_store/models/demo/fr --out runs/models/jit112_s2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from vigface.config import TrainDiTConfig, load_config, parse_overrides
from vigface.data import AlignedFaceFolder
from vigface.fr_model import FRModel
from vigface.generator.artifact import Generator
from vigface.generator.autoencoder import load_autoencoder
from vigface.generator.diffusion import training_scheduler
from vigface.generator.dit import FaceDiT
from vigface.training.dit import generator_card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the run's training folder")
    ap.add_argument("--fr", required=True, type=Path, help="the run's stage-1 model folder")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="the run's --set overrides (repeatable), e.g. model.pose_embedding=true",
    )
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists")
    cfg = load_config(args.config, TrainDiTConfig, overrides=parse_overrides(args.overrides))
    fr = FRModel.load(args.fr)
    vae = load_autoencoder(Path(cfg.autoencoder)) if cfg.autoencoder else None
    channels = vae.config.latent_channels if vae is not None else 3
    dit = FaceDiT(
        identity_dim=fr.real_prototypes.shape[1], in_channels=channels, **cfg.model.model_dump()
    )
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    ema = EMAModel(list(dit.parameters()), decay=cfg.ema_decay, use_ema_warmup=True)
    ema.load_state_dict(state["ema"])
    ema.copy_to(dit.parameters())
    ds = AlignedFaceFolder.scan(args.data)
    poses = np.stack([s.landmarks for s in ds.samples]).astype(np.float32)
    card = {
        **generator_card(cfg, args.data, args.fr, fr, dit, state["step"]),
        "train_minutes": round(state.get("elapsed_s", 0.0) / 60, 1),
        "reproduce": [
            f"python experiments/dit_snapshot.py --config {args.config} "
            f"--checkpoint {args.checkpoint} --data {args.data} --fr {args.fr} "
            f"--out {args.out}" + "".join(f" --set {o}" for o in args.overrides)
        ],
    }
    if vae is not None:
        card["autoencoder"] = json.loads((Path(cfg.autoencoder) / "card.json").read_text())
    gen = Generator(dit=dit.eval(), scheduler=training_scheduler(**cfg.diffusion.model_dump()),
                    fr=fr, card=card, pose_landmarks=poses, autoencoder=vae)  # fmt: skip
    gen.save(args.out)
    print(f"{args.out}: step {card['steps']}, {card['train_minutes']} min")


if __name__ == "__main__":
    main()
