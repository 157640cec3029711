"""A generator whose DiT weights are the average of two checkpoints of the same lineage
(a "model soup"), to place it between them on the utility / distinctness trade-off without
training: the pre-margin weights trained the best probe, the margin fine-tune gave the
identities the independent judge finds most distinct.

Copies ``--base`` (a generator folder or store name) to ``--out`` with its DiT weights replaced
by ``(1 - alpha) * other + alpha * base``, then recalibrates the filters for the new weights
at ``--guidance`` (default: the base card's). The copied card's measurements belong to the base
weights: its ``soup`` entry says so, and only ``filters`` is re-measured here.

    git show cafd44f:model_store/models/demo/dit/diffusion_pytorch_model.safetensors \
        > runs/weights/dit_pre_margin.safetensors
    python experiments/dit_soup.py --other runs/weights/dit_pre_margin.safetensors --alpha 0.5 \
        --guidance 2 --out runs/models/soup50
    python bench/paper_table.py --model runs/models/soup50 --steps 3100 --rows synthetic \
        --images-per-identity 6 --work runs/pt_soup50
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from model_store.description import resolve
from vigface.dataset.writers import write_json

WEIGHTS = Path("dit") / "diffusion_pytorch_model.safetensors"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="demo", help="generator folder or store name")
    ap.add_argument("--other", type=Path, required=True, help="DiT .safetensors of the same shape")
    ap.add_argument("--alpha", type=float, default=0.5, help="share of --base's weights")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--guidance", type=float, help="the soup's default guidance (calibrated at)")
    ap.add_argument("--data", type=Path, default=SHARED / "train", help="for the recalibration")
    args = ap.parse_args()
    if not 0.0 <= args.alpha <= 1.0:
        sys.exit(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.out.exists():
        sys.exit(f"--out {args.out} exists; choose a new folder")
    base = resolve(args.base)
    a, b = load_file(base / WEIGHTS), load_file(args.other)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        sys.exit(f"--other {args.other} does not match {base / WEIGHTS} (names or shapes)")
    shutil.copytree(base, args.out)
    mixed = {
        k: (args.alpha * a[k].float() + (1 - args.alpha) * b[k].float()).to(a[k].dtype) for k in a
    }
    save_file(mixed, args.out / WEIGHTS)
    card_path = args.out / "model_card.json"
    card = json.loads(card_path.read_text())
    if args.guidance is not None:
        card.setdefault("sampler_defaults", {})["guidance"] = args.guidance
    card["soup"] = {
        "base": str(base), "other": str(args.other), "alpha": args.alpha,
        "note": "every measurement in this card except filters belongs to the base weights",
    }  # fmt: skip
    write_json(card_path, card)
    cmd = [sys.executable, "-m", "app.cli", "calibrate", "--model", str(args.out),
           "--data", str(args.data)]  # fmt: skip
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
