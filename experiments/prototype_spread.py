"""Would choosing spread-out virtual prototypes make identities more distinct? (issue 16)

The independent judge's ``between`` is the mean distance from each identity centre to the
nearest other one, so a dataset whose prototypes are crowded in stage-1 space might look less
distinct than real people for that reason alone. This takes a dataset the service already
delivered (``vigface generate``, its ``manifest.csv`` names each class's prototype), embeds the
first ``--pool`` identities with dlib and compares subsets of ``--identities`` of them:

* ``in_order``: the lowest prototype rows (what the allocator hands out today);
* ``random``: mean over ``--repeats`` seeded draws;
* ``spread_stage1``: greedy farthest-point selection by stage-1 prototype cosine (a selection
  the service could make before drawing, as it knows only W_V);
* ``spread_judge``: the same by the judge's own centres (an upper bound no service can use:
  the judge must stay out of the pipeline).

Prints each subset's stage-1 nearest-prototype cosine and the judge's within / between; the
last line is JSON. About 11 images/s on one core for the embedding.

    python experiments/prototype_spread.py --data runs/pt_full/virtual --pool 400 --identities 200
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from model_store.loader import load_generator
from vigface.data import AlignedFaceFolder
from vigface.evaluation.judge import OutsideJudge
from vigface.evaluation.judge_figures import identity_distances


def farthest_first(sim: np.ndarray, m: int, start: int = 0) -> list[int]:
    """Greedy selection of ``m`` rows minimising each new row's largest similarity to the
    rows already chosen (farthest-point sampling on cosine)."""
    chosen = [start]
    worst = sim[start].copy()
    for _ in range(m - 1):
        worst[chosen] = np.inf
        j = int(np.argmin(worst))
        chosen.append(j)
        worst = np.maximum(worst, sim[j])
    return chosen


def nearest_cos(w: np.ndarray) -> float:
    c = w @ w.T
    np.fill_diagonal(c, -np.inf)
    return float(c.max(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a dataset vigface generate wrote")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--pool", type=int, default=400, help="identities embedded")
    ap.add_argument("--identities", type=int, default=200, help="identities per subset")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.identities >= args.pool:
        ap.error("--identities must be below --pool")

    with open(args.data / "manifest.csv", newline="") as fh:
        proto = {r["identity"]: int(r["prototype_id"]) for r in csv.DictReader(fh)}
    ds = AlignedFaceFolder.scan(args.data / "imagefolder")
    names = sorted(ds.classes, key=lambda c: proto[c])[: args.pool]
    keep = {ds.classes.index(c) for c in names}
    ds.samples = [s for s in ds.samples if s.label in keep]
    images, labels = ds.load_array(112)
    labels = np.asarray(ds.classes)[labels]
    print(f"embedding {len(images)} images of {len(names)} identities", flush=True)
    emb = OutsideJudge().embed(images)

    gen = load_generator(args.model)
    w = F.normalize(gen.fr.virtual_prototypes.float(), dim=1).numpy()[[proto[c] for c in names]]
    centres = np.stack([emb[labels == c].mean(0) for c in names])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def measure(idx: list[int]) -> dict:
        pick = np.isin(labels, [names[i] for i in idx])
        d = identity_distances(emb[pick], labels[pick])
        return {
            "stage1_nearest_cos": round(nearest_cos(w[idx]), 4),
            "within": round(d["within"], 4),
            "between": round(d["between"], 4),
        }

    m = args.identities
    rng = np.random.default_rng(0)
    draws = [measure(sorted(rng.choice(len(names), m, replace=False))) for _ in range(args.repeats)]
    rows = {
        "in_order": measure(list(range(m))),
        "random": {k: round(float(np.mean([d[k] for d in draws])), 4) for k in draws[0]},
        "spread_stage1": measure(farthest_first(w @ w.T, m)),
        "spread_judge": measure(farthest_first(centres @ centres.T, m)),
    }
    card_real = (gen.card.get("judge") or {}).get("real") or {}
    print(f"\n{m} of the first {len(names)} identities of {args.data}; judge {OutsideJudge.name}")
    print("| subset | stage-1 nearest-prototype cosine | judge within | judge between |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        cos, within, between = r["stage1_nearest_cos"], r["within"], r["between"]
        print(f"| {name} | {cos:.3f} | {within:.3f} | {between:.3f} |")
    if card_real:
        within, between = card_real["within"], card_real["between"]
        print(f"| real people (card) | - | {within:.3f} | {between:.3f} |")
    print(json.dumps({"data": str(args.data), "pool": len(names), "identities": m, "rows": rows}))


if __name__ == "__main__":
    main()
