"""Does a generated face show the pose it was asked for? The yaw requested (from the landmarks
the generator was conditioned on) against the yaw the face shows (dlib's 68-point predictor on
the pixels, vigface/evaluation/shown_pose.py), per yaw bin; real faces first, at 112 px and
degraded to the generator's resolution, to show what the measurement itself gets right.

    python bench/pose_adherence.py --model demo          # 40 identities x 8, uniform_yaw

Prints one table (per requested yaw bin: count, mean |requested|, mean |shown| for real and
generated faces, and how often the shown yaw falls in the requested bin); the last line is
JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.data import AlignedFaceFolder
from vigface.dataset.pose import YAW_BINS, estimate_pose
from vigface.evaluation.judge import degrade
from vigface.evaluation.shown_pose import ShownPose, per_bin

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--images-per-identity", type=int, default=8)
    ap.add_argument("--pose", default="uniform_yaw")
    ap.add_argument("--real", type=Path, default=SHARED / "dev")
    ap.add_argument("--real-images", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=32, help="the generator's sample size")
    ap.add_argument("--out", type=Path, default=Path("runs/pose_adherence"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shown = ShownPose()

    ds = AlignedFaceFolder.scan(args.real)
    keep = [i for i, s in enumerate(ds.samples) if s.landmarks is not None][: args.real_images]
    ds.samples = [ds.samples[i] for i in keep]
    images, _ = ds.load_array(112)
    requested = estimate_pose(np.array([s.landmarks for s in ds.samples], float))[:, 0]
    real_112 = per_bin(requested, shown.yaw(images))
    real_low = per_bin(requested, shown.yaw(degrade(images, args.resolution)))

    data = args.out / f"{args.model}_{args.pose}"
    if not (data / "report.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "app.cli", "generate", "--model", args.model,
             "--identities", str(args.identities),
             "--images-per-identity", str(args.images_per_identity),
             "--pose", args.pose, "--seed", str(args.seed), "--out", str(data)],
            check=True,
        )  # fmt: skip
    rows = [r for r in csv.DictReader((data / "manifest.csv").open()) if r["accepted"] == "True"]
    gen = np.stack(
        [
            np.asarray(Image.open(data / "imagefolder" / r["identity"] / f"{r['index']}.jpg"))
            for r in rows
        ]
    )
    asked = estimate_pose(
        np.array([[float(r[f"{a}{i}"]) for i in range(1, 6) for a in "xy"] for r in rows])
    )[:, 0]
    synthetic = per_bin(asked, shown.yaw(gen))

    print(f"yaw shown (dlib 68-point on the pixels) vs requested; generator {args.model}, "
          f"pose {args.pose}, {len(rows)} images; real: {len(images)} held-out faces")  # fmt: skip
    print(f"agreement: real 112 px r={real_112['pearson']} same bin {real_112['same_bin']}; "
          f"real {args.resolution} px r={real_low['pearson']} same bin {real_low['same_bin']}; "
          f"generated r={synthetic['pearson']} same bin {synthetic['same_bin']}")  # fmt: skip
    print("| requested bin | generated n | requested abs yaw | shown abs yaw | shown in bin "
          f"| real {args.resolution} px n | real shown in bin |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in YAW_BINS:
        g = synthetic["bins"].get(name)
        rl = real_low["bins"].get(name, {})
        if g:
            print(f"| {name} | {g['n']} | {g['requested_abs_yaw']} | {g['shown_abs_yaw']} | "
                  f"{g['same_bin']} | {rl.get('n', 0)} | {rl.get('same_bin', '-')} |")  # fmt: skip
    print(json.dumps({"real_112": real_112, f"real_{args.resolution}": real_low,
                      "generated": synthetic, "model": args.model, "pose": args.pose}))  # fmt: skip


if __name__ == "__main__":
    main()
