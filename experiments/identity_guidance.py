"""Identity fidelity of a generator, and what guidance does to it (issue 3, check 1).

For 50 real training prototypes and 50 virtual prototypes, 8 images each (8 poses spread
over the yaw range of the entry's pose landmarks), at g = 4 and g = 1 with 25 DPM-Solver
steps: mean cosine between f_FR(image) and its own prototype, and mean cosine to the nearest
(other) real prototype. When the generator was trained with a virtual-identity term and
a held-out tail of W_V (``virtual_identity_holdout`` in its card), a third group draws from
that tail only: prototypes the DiT never saw. Writes a sample grid per group (rows =
identities, columns = poses) beside the model card with ``--grids``. Last line: one JSON object.

    python experiments/identity_guidance.py --model demo --grids
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model_store import resolve
from vigface.evaluation.identity import identity_fidelity
from vigface.generator.artifact import Generator
from vigface.generator.grid import pose_columns, save_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--identities", type=int, default=50)
    ap.add_argument("--poses", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0, 1.0])
    ap.add_argument("--grids", action="store_true", help="save grids/<group>_g<g>.png in the entry")
    ap.add_argument("--grid-rows", type=int, default=10)
    args = ap.parse_args()
    entry = resolve(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = Generator.load(entry, device=device)
    if gen.pose_landmarks is None:
        raise SystemExit(f"{entry} has no pose_landmarks.npy")
    poses = pose_columns(gen.pose_landmarks, args.poses)
    results = {}
    t0 = time.time()
    groups = {"real": ("real", None), "virtual": ("virtual", None)}
    holdout = int(gen.card.get("virtual_identity_holdout") or 0)
    if holdout:
        n_virtual = gen.fr.virtual_prototypes.shape[0]
        groups["virtual_heldout"] = ("virtual", (n_virtual - holdout, n_virtual))
    for g in args.guidance:
        for group, (kind, rows) in groups.items():
            count = min(args.identities, rows[1] - rows[0]) if rows else args.identities
            r = identity_fidelity(gen, kind, count, poses, g, args.steps, rows=rows)
            r["group"] = group
            images = r.pop("images_array")
            r.pop("cos_own_all")
            r.pop("nearest_real_all")
            if args.grids:
                rows = min(args.grid_rows, args.identities)
                path = entry / "grids" / f"{group}_g{g:g}.png"
                save_grid(images[: rows * args.poses], rows, args.poses, path)
                r["grid"] = str(path.relative_to(entry))
            results[f"{group}_g{g:g}"] = r
            print(json.dumps(r))
    summary = {k: v["cos_own_mean"] for k, v in results.items()}
    g_hi, g_lo = max(args.guidance), min(args.guidance)
    summary["guidance_raises_real"] = (
        results[f"real_g{g_hi:g}"]["cos_own_mean"] > results[f"real_g{g_lo:g}"]["cos_own_mean"]
    )
    summary["guidance_raises_virtual"] = (
        results[f"virtual_g{g_hi:g}"]["cos_own_mean"]
        > results[f"virtual_g{g_lo:g}"]["cos_own_mean"]
    )
    for group in groups:
        if group == "real":
            continue
        v = results[f"{group}_g{g_hi:g}"]
        summary[f"{group}_own_minus_nearest_real"] = round(
            v["cos_own_mean"] - v["cos_nearest_other_real_mean"], 4
        )
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
