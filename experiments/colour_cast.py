"""Where latent112's warm colour cast comes from: the face region's colour, per image, of real
dev faces, of their reconstructions through the entry's autoencoder, and of draws at several
sampler settings (one core).

    python experiments/colour_cast.py --model latent112 --set steps=25 --set guidance=1

Colour is measured on the centre of the crop (rows 36-92, columns 28-84: cheeks, nose, mouth):
the mean of Cb and Cr (YCbCr, 0-255) and their spread across images. A cast shows as a shifted
mean; missing variety of skin tones as a small spread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from vigface.data import AlignedFaceFolder

ROOT = Path(__file__).resolve().parents[1]


def colour(faces: np.ndarray) -> dict:
    """Face-centre colour of (N, 112, 112, 3) uint8 RGB faces."""
    x = faces[:, 36:92, 28:84].astype(np.float64).reshape(len(faces), -1, 3).mean(1)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    sat = faces[:, 36:92, 28:84].astype(np.float64)
    sat = (sat.max(-1) - sat.min(-1)).mean((1, 2))
    return {
        "n": len(faces), "Y": round(y.mean(), 1), "Y_sd": round(y.std(), 1),
        "Cb": round(cb.mean(), 1), "Cb_sd": round(cb.std(), 2),
        "Cr": round(cr.mean(), 1), "Cr_sd": round(cr.std(), 2),
        "chroma": round(sat.mean(), 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="latent112")
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared/data/lfw112/dev")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--images-per-identity", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--real-rows", action="store_true", help="also real faces and reconstructions")
    ap.add_argument("--sheet", type=Path, default=None)
    ap.add_argument("--solver-kw", default="{}", help="JSON keywords for the solver, over all")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.real_rows:
        from model_store.loader import open_generator
        from vigface.evaluation.reconstruction import reconstruct

        real, _ = AlignedFaceFolder.scan(args.real).load_array(112)
        real = real[np.random.default_rng(0).choice(len(real), 256, False)]
        rows.append({"source": "real dev", **colour(real)})
        gen = open_generator(args.model)
        if gen.autoencoder is not None:
            rows.append({"source": "reconstructed", **colour(reconstruct(gen.autoencoder, real))})
    spec = importlib.util.spec_from_file_location("fq", ROOT / "bench/face_quality.py")
    fq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fq)
    solver_kw = json.loads(args.solver_kw)
    if solver_kw:  # what the solver's options do to 10 steps, without a setting for them
        import vigface.sampling as sampling

        plain = sampling.sampling_scheduler

        def patched(train, name="dpmsolver", spacing=None):
            base = plain(train, name, spacing)
            return type(base).from_config(base.config, **solver_kw)

        sampling.sampling_scheduler = patched
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.set)}
    faces, cos, _, rate, _ = fq.draw(
        args.model, args.identities, args.images_per_identity, "match_training", 0, 32, overrides
    )
    source = f"{args.model} {overrides or 'card defaults'} {solver_kw or ''}".strip()
    rows.append({"source": source, **colour(faces), "fr_cos_own": round(float(cos.mean()), 4),
                 "img_per_s": round(rate, 2)})  # fmt: skip
    if args.sheet:
        from vigface.evaluation.reconstruction import contact_sheet

        per = args.images_per_identity
        contact_sheet([faces[i * per : (i + 1) * per] for i in range(8)], args.sheet, per)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
