"""How faithfully a face autoencoder round-trips faces it never trained on (LFW-112 dev):
PSNR, the stage-1 FR model's and the outside judge's cosine between a face and its
reconstruction, and what the eye sees (seams on the 16-px grid, detail above 32 px, how often
dlib's detector finds a well-placed face), each beside the same measure on the real faces.

    python bench/autoencoder_quality.py --autoencoder runs/ae112/autoencoder
    python bench/autoencoder_quality.py --autoencoder latent112          # a store entry's

The contact sheet (originals above reconstructions) goes to ``--out``; it holds LFW pixels,
so it is for looking at, not for committing. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vigface.data import AlignedFaceFolder
from vigface.evaluation.image_quality import quality_summary
from vigface.evaluation.reconstruction import contact_sheet, reconstruction_report

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--autoencoder", required=True, help="autoencoder folder or store name")
    ap.add_argument("--fr", default="demo", help="stage-1 FR model folder or store name")
    ap.add_argument("--data", type=Path, default=SHARED / "dev")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/autoencoder_quality"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from model_store import ModelNotFound, resolve
    from vigface.evaluation.judge import OutsideJudge
    from vigface.fr_model import FRModel
    from vigface.generator.autoencoder import load_autoencoder

    try:
        folder = resolve(args.autoencoder)
    except ModelNotFound as exc:
        raise SystemExit(f"--autoencoder: {exc}") from None
    if (folder / "autoencoder").is_dir():
        folder = folder / "autoencoder"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--autoencoder: {args.autoencoder} holds no autoencoder")
    if not args.data.is_dir():
        raise SystemExit(f"--data: {args.data} is not a folder of aligned faces")
    vae = load_autoencoder(folder).eval()
    fr = FRModel.load(resolve(args.fr, part="fr"))
    faces, _ = AlignedFaceFolder.scan(args.data).load_array(112)
    pick = np.random.default_rng(args.seed).choice(len(faces), min(args.images, len(faces)), False)
    faces = faces[np.sort(pick)]

    report, rec = reconstruction_report(vae, fr, faces, judge=OutsideJudge())
    seen = quality_summary(rec, (16,))
    real = quality_summary(faces, (16,))
    report["face_well_placed"] = seen["face_well_placed"]
    report["face_well_placed_real"] = real["face_well_placed"]
    args.out.mkdir(parents=True, exist_ok=True)
    contact_sheet([faces[:8], rec[:8], faces[8:16], rec[8:16]], args.out / "reconstructions.png")
    for key, value in report.items():
        print(f"{key:28s} {value}")
    print(json.dumps({"autoencoder": str(folder), **report}))


if __name__ == "__main__":
    main()
