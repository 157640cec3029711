"""Does the leakage filter catch real people and pass virtual ones? (issue 4, checks 1-2)

Draws ``--images`` images (poses from the entry's pose bank) for ``--real`` identities taken
from real training prototypes and ``--virtual`` virtual identities, judges each with the
entry's ``tau_leak`` (image: max cosine to any real prototype; identity: the same for its
mean embedding) and prints the flag rates. Also checks the pose sampler: total-variation
distance between requested and drawn yaw-bin histograms for 1,000 images and each preset.
Last line: one JSON object.

    python bench/leakage_filter.py --model demo
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from model_store import resolve
from vigface.generator.artifact import Generator
from vigface.pose import YAW_BINS, PoseBank, total_variation
from vigface.sampling import ImageRequest, Sampler, SamplerSettings, image_seed


def flag_rates(gen, protos, rows, bank, images, tau, args, own_rows=None) -> dict:
    """Flag rates of one group; with ``own_rows`` (real prototypes) also how often an
    identity's own prototype is its nearest real one, i.e. whether the generator reproduced
    the person at all (a filter cannot flag a leak that the images do not carry)."""
    reqs, pose_idx = [], bank.draw("match_training", len(rows) * images, seed=5)[0]
    for n, r in enumerate(rows):
        for j in range(images):
            reqs.append(
                ImageRequest(
                    protos[r].cpu().numpy(),
                    bank.landmarks[pose_idx[n * images + j]],
                    image_seed(11, int(r), j),
                )
            )
    guidance = (
        SamplerSettings.for_model(gen.card).guidance if args.guidance is None else args.guidance
    )
    sampler = Sampler(gen.dit, gen.scheduler, "dpmsolver", args.steps, guidance, args.batch_size,
                      autoencoder=gen.autoencoder)  # fmt: skip
    imgs = np.concatenate([x for _, x in sampler.stream(reqs)])
    emb = gen.fr.embed(imgs, flip=False).numpy()
    real = F.normalize(gen.fr.real_prototypes.float().cpu(), dim=1).numpy()
    img_near = (emb @ real.T).max(1)
    ident = emb.reshape(len(rows), images, -1).mean(1)
    ident /= np.linalg.norm(ident, axis=1, keepdims=True)
    id_sims = ident @ real.T
    id_near = id_sims.max(1)
    extra = {}
    if own_rows is not None:
        extra["own_prototype_is_nearest_rate"] = round(
            float((id_sims.argmax(1) == own_rows).mean()), 4
        )
        extra["identity_cos_own_mean"] = round(
            float(id_sims[np.arange(len(rows)), own_rows].mean()), 4
        )
    return {
        "identities": len(rows),
        "images": len(reqs),
        "image_flag_rate": round(float((img_near > tau).mean()), 4),
        "identity_flag_rate": round(float((id_near > tau).mean()), 4),
        "image_nearest_real_mean": round(float(img_near.mean()), 4),
        "identity_nearest_real_mean": round(float(id_near.mean()), 4),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--real", type=int, default=50)
    ap.add_argument("--virtual", type=int, default=100)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None, help="default: the card's")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    gen = Generator.load(resolve(args.model), device="cuda" if torch.cuda.is_available() else "cpu")
    tau = gen.card.get("filters", {}).get("tau_leak")
    if tau is None:
        raise SystemExit("the model card has no filters.tau_leak: run `vigface calibrate` first")
    bank = PoseBank.from_landmarks(gen.pose_landmarks)
    t0 = time.time()
    fr = gen.fr
    real_rows = np.linspace(0, fr.real_prototypes.shape[0] - 1, args.real).round().astype(int)
    virt_rows = np.arange(args.virtual)
    real = flag_rates(
        gen, fr.real_prototypes, real_rows, bank, args.images, tau, args, own_rows=real_rows
    )
    virt = flag_rates(gen, fr.virtual_prototypes, virt_rows, bank, args.images, tau, args)
    pose = {}
    for preset in ("match_training", "frontal", "uniform_yaw"):
        idx, w = bank.draw(preset, 1000, seed=1)
        drawn = np.bincount(bank.bins[idx], minlength=len(YAW_BINS)) / 1000
        pose[preset] = round(total_variation(drawn, w), 4)
    result = {
        "tau_leak": tau,
        "real_prototypes": real,
        "virtual_prototypes": virt,
        "real_flagged_identity_rate": real["identity_flag_rate"],
        "virtual_pass_identity_rate": round(1 - virt["identity_flag_rate"], 4),
        "pose_tv_1000": pose,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
