"""What the FR model gives *real* training faces at the generator's resolution (a ceiling).

Identity fidelity of generated faces (``experiments/identity_guidance.py``) is only meaningful next
to what real images of the same identities score through the same embedding path: real
training crops resized to ``--size`` px, mean cosine to their own prototype and to the
nearest other real prototype. Last line: one JSON object.

    python experiments/fr_resolution_ceiling.py --model demo --data ../shared/data/lfw112/train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model_store import resolve
from vigface.data.augment import to_model_input
from vigface.fr_model import FRModel
from vigface.training.dit_data import load_face_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="store entry or folder with fr/")
    ap.add_argument("--data", type=Path, required=True, help="the FR model's training folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 112])
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    fr = FRModel.load(resolve(args.model, part="fr"))
    real = F.normalize(fr.real_prototypes.float(), dim=1)
    result = {}
    for size in args.sizes:
        images, _, rows = load_face_data(args.data, size, fr, progress=False)
        idx = np.random.default_rng(0).choice(len(rows), min(args.images, len(rows)), False)
        with torch.no_grad():
            emb = F.normalize(fr.embedder(to_model_input(torch.from_numpy(images[idx]))), dim=1)
        sims = emb.float() @ real.T
        own_rows = torch.from_numpy(rows[idx])
        own = sims[torch.arange(len(idx)), own_rows].clone()
        sims[torch.arange(len(idx)), own_rows] = -2
        nearest = sims.max(1).values
        result[f"{size}px"] = {
            "cos_own_mean": round(float(own.mean()), 4),
            "cos_nearest_other_real_mean": round(float(nearest.mean()), 4),
            "own_beats_nearest_real": round(float((own > nearest).float().mean()), 4),
        }
        print(size, json.dumps(result[f"{size}px"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
