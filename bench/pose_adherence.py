"""Does a generated face show the pose it was asked for? The yaw requested (from the landmarks
the generator was conditioned on) against the yaw the face shows (dlib's 68-point predictor on
the pixels, vigface/evaluation/shown_pose.py), per yaw bin; real faces first, at 112 px and
degraded to the generator's resolution, to show what the measurement itself gets right.

    python bench/pose_adherence.py --model demo          # 40 identities x 8, uniform_yaw
    python bench/pose_adherence.py --model M --resolution 112 \
        --pose '{"left_35_60": 0.5, "right_35_60": 0.5}' --pose-guidance 2 --identity-check

``--pose-guidance`` passes the order's pose weight (models trained with landmark dropout).
``--identity-check`` also draws the same identities frontal and prints the outside judge's
within-identity distance for both: turning a face must not cost it its identity.

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
from vigface.evaluation.judge import degrade
from vigface.evaluation.shown_pose import ShownPose, per_bin
from vigface.pose import YAW_BINS, estimate_pose

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
    ap.add_argument("--pose-guidance", type=float, help="the order's pose_guidance")
    ap.add_argument("--spares", type=int, help="the order's spares (default: the service's)")
    ap.add_argument("--identity-check", action="store_true",
                    help="judge within-identity distance against a frontal draw")  # fmt: skip
    args = ap.parse_args()
    shown = ShownPose()

    ds = AlignedFaceFolder.scan(args.real)
    keep = [i for i, s in enumerate(ds.samples) if s.landmarks is not None][: args.real_images]
    ds.samples = [ds.samples[i] for i in keep]
    images, _ = ds.load_array(112)
    requested = estimate_pose(np.array([s.landmarks for s in ds.samples], float))[:, 0]
    real_112 = per_bin(requested, shown.yaw(images))
    real_low = per_bin(requested, shown.yaw(degrade(images, args.resolution)))

    data = draw(args, args.pose)
    rows, gen = delivered(data)
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
    shown_yaw = np.abs(shown.yaw(gen))
    shown_yaw = shown_yaw[np.isfinite(shown_yaw)]
    turned = float(((shown_yaw >= 35) & (shown_yaw < 60)).mean())
    print(f"every generated face: mean shown |yaw| {shown_yaw.mean():.1f} deg; "
          f"{100 * turned:.1f} % show 35-60 deg (either side)")  # fmt: skip
    result = {"real_112": real_112, f"real_{args.resolution}": real_low, "generated": synthetic,
              "model": args.model, "pose": args.pose, "pose_guidance": args.pose_guidance,
              "mean_shown_abs_yaw": round(float(shown_yaw.mean()), 2),
              "shown_35_60": round(turned, 4)}  # fmt: skip
    if args.identity_check:
        from vigface.evaluation.judge import OutsideJudge
        from vigface.evaluation.judge_figures import identity_distances

        judge = OutsideJudge()
        frontal_rows, frontal = delivered(draw(args, "frontal"))
        within = {}
        for name, rs, imgs in (("asked", rows, gen), ("frontal", frontal_rows, frontal)):
            labels = np.array([r["identity"] for r in rs])
            within[name] = round(identity_distances(judge.embed(imgs), labels)["within"], 4)
        print(f"judge within-identity: asked pose {within['asked']}, frontal {within['frontal']} "
              f"(turned - frontal {within['asked'] - within['frontal']:+.4f})")  # fmt: skip
        result["judge_within"] = within
    print(json.dumps(result))


def draw(args, pose: str) -> Path:
    """Generate (or reuse) the order's dataset through the CLI, as a user would."""
    tag = "" if args.pose_guidance is None else f"_gp{args.pose_guidance:g}"
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in pose)[:60]
    data = args.out / f"{Path(args.model).name}_{safe}{tag}_s{args.seed}"
    if not (data / "report.json").is_file():
        cmd = [sys.executable, "-m", "app.cli", "generate", "--model", args.model,
               "--identities", str(args.identities),
               "--images-per-identity", str(args.images_per_identity),
               "--pose", pose, "--seed", str(args.seed), "--out", str(data)]  # fmt: skip
        if args.pose_guidance is not None:
            cmd += ["--pose-guidance", str(args.pose_guidance)]
        if args.spares is not None:
            cmd += ["--spares", str(args.spares)]
        subprocess.run(cmd, check=True)
    return data


def delivered(data: Path):
    """(accepted manifest rows, their images) of a generated dataset."""
    rows = [r for r in csv.DictReader((data / "manifest.csv").open()) if r["accepted"] == "True"]
    images = np.stack(
        [
            np.asarray(Image.open(data / "imagefolder" / r["identity"] / f"{r['index']}.jpg"))
            for r in rows
        ]
    )
    return rows, images


if __name__ == "__main__":
    main()
