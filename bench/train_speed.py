"""Training throughput of both stages, through the real trainers, on generated faces.

Writes a synthetic aligned-face ImageFolder (random smooth images of ``--identities`` people
with the standard 5-point landmarks; no real pixels), then runs ``train_fr`` with the stage-1
config and ``train_dit`` with the stage-2 config for about ``--steps`` optimiser steps each
(whole epochs of the generated set) and reports images per second from the trainers' own
epoch timings (the first epoch, which includes warm-up, is left out). The last line is one
JSON object. On a GPU:

    python bench/train_speed.py --fr-config vigface/configs/fr_lfw_small.yaml \\
        --dit-config vigface/configs/dit_b.yaml --steps 300

and on this CPU, a smoke run of the same code: ``python bench/train_speed.py --smoke``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.config import TrainDiTConfig, TrainFRConfig, load_config
from vigface.constants import CROP_SIZE

TEMPLATE = "38,52,74,52,56,72,42,92,70,92"  # the insightface 5-point template, 112-px crop


def synthetic_folder(root: Path, identities: int, per_identity: int, seed: int = 0) -> Path:
    """Smooth random faces: one colour field per identity plus per-image noise."""
    rng = np.random.default_rng(seed)
    rows = ["split,identity,file,detector,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    for i in range(identities):
        base = rng.uniform(0, 255, (8, 8, 3))
        (root / f"id_{i:05d}").mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            big = Image.fromarray(img).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, format="JPEG", quality=90)
            name = f"id_{i:05d}_{j:04d}.jpg"
            (root / f"id_{i:05d}" / name).write_bytes(buf.getvalue())
            rows.append(f"train,id_{i:05d},{name},hog,{TEMPLATE}")
    (root.parent / f"{root.name}_landmarks.csv").write_text("\n".join(rows) + "\n")
    return root


def stage1_rate(out: Path) -> float:
    """Mean of the trainer's per-epoch ``img_per_s`` after the first (warm-up) epoch."""
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in log if "img_per_s" in r][1:]
    return float(np.mean(rates)) if rates else float("nan")


def stage2_rate(out: Path, batch_size: int) -> float:
    """Images per second between the first and the last logged step (warm-up left out)."""
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "elapsed_s" in r]
    if len(steps) < 2 or steps[-1]["elapsed_s"] <= steps[0]["elapsed_s"]:
        return float("nan")
    done = (steps[-1]["step"] - steps[0]["step"]) * batch_size
    return done / (steps[-1]["elapsed_s"] - steps[0]["elapsed_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fr-config", default="vigface/configs/fr_lfw_small.yaml")
    ap.add_argument("--dit-config", default="vigface/configs/dit_b.yaml")
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300, help="about this many steps per stage")
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny models and data (CPU check)")
    args = ap.parse_args()

    from vigface.training.dit import train_dit
    from vigface.training.fr import train_fr

    tmp = Path(tempfile.mkdtemp(prefix="vigface-train-speed-"))
    if args.smoke:
        args.identities, args.per_identity, args.steps = 20, 4, 6
    data = synthetic_folder(tmp / "train", args.identities, args.per_identity)
    images = args.identities * args.per_identity

    fr_cfg = load_config(args.fr_config, TrainFRConfig)
    dit_cfg = load_config(args.dit_config, TrainDiTConfig)
    if args.smoke:
        fr_cfg = fr_cfg.model_copy(update={"batch_size": 16})
        dit_cfg = dit_cfg.model_copy(
            update={
                "batch_size": 16,
                "model": dit_cfg.model.model_copy(
                    update={"sample_size": 16, "hidden_size": 32, "depth": 2, "num_heads": 2}
                ),
            }
        )
    fr_epochs = max(2, round(args.steps * fr_cfg.batch_size / images))
    dit_epochs = max(2, round(args.steps * dit_cfg.batch_size / images))
    fr_cfg = fr_cfg.model_copy(update={"epochs": fr_epochs, "eval_pairs": None})
    dit_cfg = dit_cfg.model_copy(
        update={"epochs": dit_epochs, "max_minutes": None, "log_every": 2 if args.smoke else 10}
    )

    t0 = time.perf_counter()
    train_fr(fr_cfg, data, tmp / "fr", resume=False, device=args.device)
    fr_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_dit(dit_cfg, data, tmp / "fr", tmp / "dit", resume=False, device=args.device)
    dit_wall = time.perf_counter() - t0
    result = {
        "device": args.device or "auto",
        "images": images,
        "stage1": {
            "config": args.fr_config,
            "epochs": fr_epochs,
            "img_per_s": round(stage1_rate(tmp / "fr"), 1),
            "wall_s": round(fr_wall, 1),
        },
        "stage2": {
            "config": args.dit_config,
            "epochs": dit_epochs,
            "img_per_s": round(stage2_rate(tmp / "dit", dit_cfg.batch_size), 1),
            "wall_s": round(dit_wall, 1),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
