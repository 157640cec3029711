"""The paper's two tables at LFW-112 scale: what virtual and real-identity synthetic data are
worth for training face recognition, one probe recipe and one step budget for every row.

Rows (the paper's Table 1 and Table 2 shapes):

* real: the LFW-112 train set;
* synthetic: virtual identities only, as many images as the real set;
* real + virtual: both (virtual-identity augmentation);
* real + real-aug: real classes filled up to ``--target`` images each from their own
  prototypes (real-identity augmentation, the long tail);
* real + both.

Each row trains the probe (``vigface/configs/fr_probe.yaml``: stage 1 without virtual
prototypes, ``--steps`` steps at ``--resolution`` px) and reports 10-fold accuracy on each
benchmark (``--bench NAME=FILE``, repeatable; default: the LFW-112 dev pairs, identities no
row trained on, and CFP-FP and CFP-FF from ``../shared/data/cfp112`` where present: the
cross-pose benchmark of the paper's table). Synthetic sets are drawn first with ``vigface generate``
(resumable: a rerun continues, re-checks the settings and rewrites the same files).
Prints a markdown table; the last line is JSON.

    python bench/paper_table.py                        # 600 steps, 56 px, demo generator
    python bench/paper_table.py --steps 3100           # stage 1's full budget (40 epochs)
    python bench/paper_table.py --steps 3100 --rows synthetic --upsample --work runs/pt_up
    python bench/paper_table.py --steps 3100 --rows synthetic --images-per-identity 6 \
        --work runs/pt_ipi6                            # another identities x images split

A row another work folder trained (``row_<row>_<steps>steps_<px>px.json``) can be copied in:
a finished row is read, not trained again, so one real row serves several synthetic variants.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from vigface.data import AlignedFaceFolder
from vigface.training.probe import dataset_utility, probe_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"
CFP = SHARED.parent / "cfp112"


def default_benchmarks() -> list[str]:
    out = [f"dev={SHARED / 'dev_pairs.bin'}"]
    out += [
        f"{n}={CFP / (n + '.bin')}" for n in ("cfp_fp", "cfp_ff") if (CFP / f"{n}.bin").is_file()
    ]
    return out


def generate(args, out: Path, *extra: str) -> Path:
    """Draw (or resume) a set; ``vigface generate`` refuses a folder drawn with other settings,
    so a rerun cannot read rows trained on another set."""
    cmd = [sys.executable, "-m", "app.cli", "generate", "--model", args.model,
           "--out", str(out), "--seed", str(args.seed), *extra]  # fmt: skip
    if args.upsample is not None:  # else the model card's default
        cmd.append("--upsample" if args.upsample else "--no-upsample")
    if args.guidance is not None:
        cmd += ["--guidance", str(args.guidance)]
    if args.guidance_interval is not None:
        cmd += ["--guidance-interval", args.guidance_interval]
    if args.tau_consistency is not None:
        cmd += ["--tau-consistency", str(args.tau_consistency)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=SHARED / "train")
    ap.add_argument(
        "--bench", action="append", metavar="NAME=FILE",
        help="an insightface .bin to verify on (repeatable; default: dev, cfp_fp, cfp_ff)",
    )  # fmt: skip
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--resolution", type=int, default=56)
    ap.add_argument("--images-per-identity", type=int, default=10)
    ap.add_argument("--target", type=int, default=3, help="real-aug: images per real class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/paper_table"))
    ap.add_argument(
        "--upsample", action=argparse.BooleanOptionalAction, default=None,
        help="draw through the model's upsampler (default: the card's); one --work per choice",
    )  # fmt: skip
    ap.add_argument("--guidance", type=float, help="default: the card's sampler_defaults")
    ap.add_argument(
        "--guidance-interval", metavar="LO,HI",
        help="CFG only for t/T in [LO, HI] (default: the card's); one --work per choice",
    )  # fmt: skip
    ap.add_argument(
        "--tau-consistency", type=float,
        help="min cosine to the own prototype (default: the card's); one --work per choice",
    )  # fmt: skip
    ap.add_argument(
        "--rows", default="real,synthetic,real+virtual,real+real_aug,real+both",
        help="comma-separated subset of the rows",
    )  # fmt: skip
    args = ap.parse_args()
    benches = dict(b.split("=", 1) for b in (args.bench or default_benchmarks()))
    args.work.mkdir(parents=True, exist_ok=True)
    real_images = len(AlignedFaceFolder.scan(args.real).samples)
    wanted = args.rows.split(",")
    synthetic = real_aug = None
    if any("virtual" in r or "synthetic" in r or "both" in r for r in wanted):
        ids = math.ceil(real_images / args.images_per_identity)
        synthetic = generate(
            args, args.work / "virtual",
            "--identities", str(ids), "--images-per-identity", str(args.images_per_identity),
        )  # fmt: skip
    if any("real_aug" in r or "both" in r for r in wanted):
        real_aug = generate(
            args, args.work / "real_aug", "--mode", "real_augment",
            "--real-data", str(args.real), "--images-per-identity", str(args.target),
        )  # fmt: skip
    sources = {
        "real": [args.real],
        "synthetic": [synthetic],
        "real+virtual": [args.real, synthetic],
        "real+real_aug": [args.real, real_aug],
        "real+both": [args.real, synthetic, real_aug],
    }
    cfg = probe_config(args.steps, args.resolution)
    rows = {}
    for name in wanted:
        tag = f"{name.replace('+', '_')}_{args.steps}steps_{args.resolution}px"
        out = args.work / f"row_{tag}.json"
        r = json.loads(out.read_text()) if out.is_file() else None
        if r is None or set(benches) - set(r["benchmarks"]):  # resumable: a finished row is
            print(f"--- {name}", flush=True)  # read, not trained again
            r = dataset_utility(sources[name], benches, args.work / f"probe_{tag}", cfg)
            out.write_text(json.dumps(r))
        rows[name] = r
    print(f"\nprobe: {args.steps} steps at {args.resolution} px, batch {cfg.batch_size}; "
          f"benchmarks of identities no row trained on; generator {args.model}")  # fmt: skip
    print("| training data | images | identities | benchmark | accuracy | TAR@FAR=1e-3 | vs real |")
    print("|---|---|---|---|---|---|---|")
    summary = {"steps": args.steps, "resolution": args.resolution, "model": args.model,
               "train": {n: r["train"] for n, r in rows.items()}, "benchmarks": {}}  # fmt: skip
    for bench in benches:
        real = rows.get("real", {}).get("benchmarks", {}).get(bench, {})
        for name, r in rows.items():
            m = r["benchmarks"][bench]
            rel = ""
            if name != "real" and real:
                rel = (f"{m['accuracy'] / real['accuracy']:.3f}x" if name == "synthetic" else
                       f"{100 * (m['accuracy'] - real['accuracy']):+.2f} points")  # fmt: skip
            print(f"| {name} | {r['train']['images']} | {r['train']['identities']} | {bench} | "
                  f"{m['accuracy']:.4f} +- {m['accuracy_std']:.4f} | "
                  f"{m.get('tar_at_far_1e-3', float('nan')):.3f} | {rel} |")  # fmt: skip
            summary["benchmarks"].setdefault(bench, {})[name] = {
                k: m.get(k) for k in ("accuracy", "accuracy_std", "tar_at_far_1e-3")
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
