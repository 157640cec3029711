"""Can any face match a virtual prototype? Where W_V sits relative to face embeddings.

Embeds ``--images`` training images with the entry's FR model and prints: how many principal
directions hold 90 / 95 / 99 % of the unit real prototypes' energy, the median cosine of a
real prototype to its nearest other one (the bound the demo used for ``refit-virtual
--max-real-cos``), the share of W_V's
energy inside the 90 % span, and for real images the mean cosine to their own prototype, to
the nearest other real prototype and to the nearest virtual prototype (with its maximum over
all images). When no image comes near any virtual prototype, no generator can draw a face
that matches a virtual identity better than a real one (see vigface/losses/subspace.py).
Last line: one JSON object.

    python experiments/virtual_subspace.py --model demo --data ../shared/data/lfw112/train
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from model_store import resolve
from vigface.data import AlignedFaceFolder
from vigface.fr_model import FRModel
from vigface.losses.subspace import energy_in_span, face_subspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", required=True, help="the FR model's training ImageFolder")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fr = FRModel.load(resolve(args.model, part="fr"))
    folder = AlignedFaceFolder.scan(args.data)
    images, labels = folder.load_array(fr.config.backbone.input_size)
    index = {c: i for i, c in enumerate(fr.classes)}
    rows = np.array([index.get(folder.classes[lab], -1) for lab in labels])
    keep = np.flatnonzero(rows >= 0)
    pick = np.random.default_rng(args.seed).choice(keep, min(args.images, len(keep)), False)
    emb = fr.embed(images[pick], flip=False)
    own_rows = torch.from_numpy(rows[pick])
    real = F.normalize(fr.real_prototypes.float(), dim=1)
    virt = F.normalize(fr.virtual_prototypes.float(), dim=1)
    sim_r, sim_v = emb @ real.T, emb @ virt.T
    arange = torch.arange(len(pick))
    own = sim_r[arange, own_rows].clone()
    sim_r[arange, own_rows] = -2
    rr = real @ real.T
    rr.fill_diagonal_(-2)
    out = {
        "images": len(pick),
        "real_dims_for_energy": {
            str(e): face_subspace(real, e).shape[0] for e in (0.9, 0.95, 0.99)
        },
        "real_prototype_nearest_other_median": round(float(rr.max(1).values.median()), 4),
        "virtual_energy_in_90pct_span": round(energy_in_span(virt, face_subspace(real, 0.9)), 4),
        "image_cos_own_mean": round(float(own.mean()), 4),
        "image_nearest_other_real_mean": round(float(sim_r.max(1).values.mean()), 4),
        "image_nearest_virtual_mean": round(float(sim_v.max(1).values.mean()), 4),
        "image_nearest_virtual_max": round(float(sim_v.max()), 4),
        "virtual_subspace_energy": fr.config.head.virtual_subspace_energy,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
