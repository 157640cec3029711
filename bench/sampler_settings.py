"""Fewer forwards per image at equal identity fidelity: solvers, steps and guidance intervals.

For each setting (scheduler, steps, guidance interval) the bench draws the same identities and
poses (virtual and real prototypes, the same seeds) with the eager sampler and reports, in
this one run:

* ``img/s`` and its ratio to the baseline (DPM-Solver++, 25 steps, CFG at every step), and
  DiT forwards per image (a guided step costs two);
* own-prototype cosine of virtual and real rows and the nearest-real cosine of virtual images
  (the stage-1 FR model), the leakage pass rate of virtual images at the card's ``tau_leak``;
* with ``--judge`` (default on) the independent judge's within-identity and between-centre
  distances of the virtual identities (``vigface/evaluation/judge.py``);

and writes one grid per setting (virtual rows) to ``--grids``. Look at the grids: the numbers
are not the whole of quality. A markdown table, then one JSON line.

    python bench/sampler_settings.py --model demo
    python bench/sampler_settings.py --model demo --settings dpmsolver:25 dpmsolver:15:0.1-0.7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model_store import resolve
from vigface.evaluation.identity import identity_fidelity
from vigface.generator.artifact import Generator
from vigface.generator.grid import pose_columns, save_grid
from vigface.sampling import Sampler, SamplerSettings

DEFAULT_SETTINGS = [
    "dpmsolver:25",
    "dpmsolver:20",
    "dpmsolver:15",
    "dpmsolver:10",
    "dpmsolver:8",
    "unipc:25",
    "unipc:15",
    "unipc:10",
    "unipc:8",
    "ddim:25",
    "ddim:15",
    "ddim:10",
    "dpmsolver:25:0.1-0.7",
    "dpmsolver:15:0.1-0.7",
    "dpmsolver:15:0.0-0.5",
    "dpmsolver:15:0.3-1.0",
    "unipc:10:0.1-0.7",
    "unipc:15:0.1-0.7",
]


def parse(setting: str):
    """``scheduler:steps[:lo-hi]``."""
    parts = setting.split(":")
    interval = tuple(float(x) for x in parts[2].split("-")) if len(parts) > 2 else None
    return parts[0], int(parts[1]), interval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--identities", type=int, default=30)
    ap.add_argument("--poses", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=None, help="default: the card's")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    ap.add_argument("--batch-size", type=int, default=60)
    ap.add_argument("--judge", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--grids", type=Path, default=Path("runs/sampler_settings"))
    args = ap.parse_args()

    torch.manual_seed(0)
    gen = Generator.load(resolve(args.model))
    g = args.guidance if args.guidance is not None else SamplerSettings.for_model(gen.card).guidance
    tau_l = gen.card.get("filters", {}).get("tau_leak", 1.0)
    poses = pose_columns(gen.pose_landmarks, args.poses)
    judge = None
    if args.judge:
        from vigface.evaluation.judge import OutsideJudge
        from vigface.evaluation.judge_figures import identity_distances

        judge = OutsideJudge()
    args.grids.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.settings:
        sched, steps, interval = parse(setting)
        res = {}
        for group in ("virtual", "real"):
            res[group] = identity_fidelity(
                gen,
                group,
                args.identities,
                poses,
                g,
                steps,
                batch_size=args.batch_size,
                scheduler=sched,
                guidance_interval=interval,
            )
        v, r = res["virtual"], res["real"]
        seconds = v["sampling_seconds"] + r["sampling_seconds"]
        sampler = Sampler(
            gen.dit, gen.scheduler, sched, steps, g, guidance_interval=interval,
            autoencoder=gen.autoencoder,
        )  # fmt: skip
        row = {
            "setting": setting,
            "forwards_per_image": sampler.forwards_per_image(),
            "img_per_s": round((v["images"] + r["images"]) / seconds, 3),
            "virtual_cos_own": v["cos_own_mean"],
            "real_cos_own": r["cos_own_mean"],
            "virtual_nearest_real": v["cos_nearest_other_real_mean"],
            "virtual_leak_pass": round(float(np.mean(np.array(v["nearest_real_all"]) <= tau_l)), 4),
        }
        if judge is not None:
            labels = np.repeat(np.arange(args.identities), args.poses)
            d = identity_distances(judge.embed(v["images_array"]), labels)
            row["judge_within"], row["judge_between"] = (
                round(d["within"], 4),
                round(d["between"], 4),
            )
        name = setting.replace(":", "_")
        k = min(8, args.identities)
        save_grid(v["images_array"][: k * args.poses], k, args.poses, args.grids / f"{name}.png")
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["img_per_s"] / base["img_per_s"], 2)
        row["d_virtual_cos_own"] = round(row["virtual_cos_own"] - base["virtual_cos_own"], 4)
        row["d_leak_pass"] = round(row["virtual_leak_pass"] - base["virtual_leak_pass"], 4)
    cols = [c for c in rows[0] if c != "setting"]
    print(
        f"\nguidance {g}, {args.identities} identities x {args.poses} poses per group, "
        f"baseline {base['setting']}\n"
    )
    print("| setting | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(f"| {row['setting']} | " + " | ".join(str(row[c]) for c in cols) + " |")
    print(json.dumps({"guidance": g, "baseline": base["setting"], "rows": rows}))


if __name__ == "__main__":
    main()
