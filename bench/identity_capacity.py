"""How distinct a model's virtual identities stay as their number grows, beside real people.

For populations of 500 to 100,000 identities (``--populations``), the mean over identities of
the cosine to the nearest other identity's prototype under the stage-1 model, for virtual
rows of W_V (``--model``, e.g. an entry made by ``vigface extend-virtual``) and for real rows
of W_R at every population the real set offers; a fit ``a + b ln N`` of the real curve carries
it past the real set's size. A population whose virtual figure is above the real curve there
is more crowded than real people are. Also printed: how many dimensions hold 90 % of W_R's
energy (the face subspace every virtual row lies in) against the embedding's.

    python bench/identity_capacity.py --model runs/demo100k --out docs/experiments/capacity.png

This is the prototype-level curve: what the outside judge sees in drawn faces is the next
step (docs/experiments/2026-12-05-capacity.md says what is measured and what is not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def nearest_other_mean(rows: torch.Tensor, chunk: int = 8192) -> float:
    """Mean over rows of the largest cosine to another row (unit rows), in bounded memory."""
    best = []
    for start in range(0, len(rows), chunk):
        sims = rows[start : start + chunk] @ rows.T
        idx = torch.arange(start, min(start + chunk, len(rows)))
        sims[idx - start, idx] = -1.0
        best.append(sims.max(1).values)
    return float(torch.cat(best).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="generator entry or store name")
    ap.add_argument(
        "--populations", default="500,1000,2000,4000,5000,10000,20000,50000,100000",
        help="comma-separated identity counts",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="PNG of the two curves")
    args = ap.parse_args()
    from model_store import resolve
    from vigface.fr_model import FRModel
    from vigface.losses.subspace import face_subspace

    entry = Path(args.model) if Path(args.model).is_dir() else resolve(args.model)
    fr = FRModel.load(entry / "fr")
    real = F.normalize(fr.real_prototypes.float(), dim=1)
    virtual = F.normalize(fr.virtual_prototypes.float(), dim=1)
    g = torch.Generator().manual_seed(args.seed)
    rows = {"real": {}, "virtual": {}}
    for n in [int(x) for x in args.populations.split(",")]:
        for kind, w in (("real", real), ("virtual", virtual)):
            if n <= len(w):
                pick = torch.randperm(len(w), generator=g)[:n]
                rows[kind][n] = round(nearest_other_mean(w[pick]), 4)
    ns = np.array(sorted(rows["real"]))
    b, a = np.polyfit(np.log(ns), [rows["real"][n] for n in ns], 1)
    fit = {n: round(float(a + b * np.log(n)), 4) for n in sorted(rows["virtual"])}
    within = [n for n in sorted(rows["virtual"]) if rows["virtual"][n] <= fit[n]]
    dims = int(face_subspace(real, 0.9).shape[0])
    result = {
        "model": str(entry),
        "virtual_rows": len(virtual),
        "nearest_other_cos": rows,
        "real_fit": {"a": round(float(a), 4), "b_per_ln_n": round(float(b), 4), "at": fit},
        "capacity": max(within) if within else 0,
        "face_subspace_dims_90pct": dims,
        "embedding_dim": int(real.shape[1]),
    }
    print(f"{'N':>8} {'real':>8} {'real fit':>9} {'virtual':>8}")
    for n in sorted(set(rows["real"]) | set(rows["virtual"])):
        r, v = rows["real"].get(n), rows["virtual"].get(n)
        print(f"{n:>8} {r if r is not None else '':>8} {fit.get(n, ''):>9} {v if v else '':>8}")
    print(
        f"capacity (largest population at or below real people's fitted crowding): "
        f"{result['capacity']}; face subspace {dims} of {result['embedding_dim']} dimensions"
    )
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(list(rows["real"]), list(rows["real"].values()), "o-", label="real (W_R)")
        xs = sorted(fit)
        ax.plot(xs, [fit[x] for x in xs], "--", label="real, fitted a + b ln N")
        ax.plot(list(rows["virtual"]), list(rows["virtual"].values()), "s-", label="virtual")
        ax.set_xscale("log")
        ax.set_xlabel("identities in the population")
        ax.set_ylabel("mean cosine to the nearest other identity")
        ax.set_title("Stage-1 crowding by population (lower: more distinct)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
