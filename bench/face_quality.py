"""What a team sees in a model's faces, beside real faces measured the same way: the seam ratio
of the model's own patch grid (and of the 14-px grid), detail above 32 px, how often a face
detector that took no part in training finds a well-placed face (before any filter), the
stage-1 FR cosine of each face to its own prototype, and a contact sheet (8 identities x 8
images, one row each).

    python bench/face_quality.py --model demo --model latent112          # default pose
    python bench/face_quality.py --model latent112 --pose '{"left_35_60": 0.5, "right_35_60": 0.5}'
    python bench/face_quality.py --data runs/my_dataset                  # delivered files

With ``--model`` the faces are drawn with the model card's sampler defaults (no filter); with
``--data`` the delivered JPEGs of a dataset folder are read. Prints a table; the last line is
JSON (one row per source, ``real`` first). Contact sheets go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vigface.data import AlignedFaceFolder
from vigface.evaluation.image_quality import quality_summary
from vigface.evaluation.reconstruction import contact_sheet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def grid_period(gen) -> int:
    """The side, in 112-px output pixels, of the model's patch grid."""
    cfg = gen.dit.config
    return round(cfg.patch_size * gen.output_size / cfg.sample_size)


def draw(model: str, identities: int, per: int, pose, seed: int, batch: int, overrides=None):
    """(faces (N, 112, 112, 3) in identity order, FR cosine to own prototype, grid period,
    images per second)."""
    from model_store.loader import open_generator
    from vigface.pose import PoseBank
    from vigface.sampler_settings import SamplerSettings
    from vigface.sampling import ImageRequest, Sampler, image_seed

    gen = open_generator(model)
    settings = SamplerSettings.for_model(gen.card).model_copy(update=overrides or {})
    sampler = Sampler.for_generator(gen, settings, batch)
    bank = PoseBank.from_landmarks(gen.pose_landmarks)
    rng = np.random.default_rng(seed)
    counts = np.bincount(bank.bins, minlength=len(bank.weights(pose)))
    per_row = bank.weights(pose)[bank.bins] / counts[bank.bins]  # each bin its asked share
    rows = rng.choice(len(bank.bins), identities * per, p=per_row / per_row.sum())
    protos = gen.fr.virtual_prototypes
    chosen = rng.choice(protos.shape[0], identities, replace=False)
    reqs = [
        ImageRequest(protos[int(i)].numpy(), bank.landmarks[rows[k * per + j]],
                     image_seed(seed, int(i), j))
        for k, i in enumerate(chosen)
        for j in range(per)
    ]  # fmt: skip
    t0 = time.perf_counter()
    faces = np.concatenate([imgs for _, imgs in sampler.stream(reqs)])
    rate = len(faces) / (time.perf_counter() - t0)
    asked_yaw = bank.angles[rows, 0]
    if faces.shape[1] != 112:
        from vigface.evaluation.judge import degrade

        faces = degrade(faces, faces.shape[1]) if faces.shape[1] < 112 else faces
    emb = gen.fr.embed(faces, flip=False)
    own = torch.nn.functional.normalize(protos[chosen].float(), dim=1).repeat_interleave(per, 0)
    cos = (emb * own).sum(1).numpy()
    return faces, cos, grid_period(gen), rate, asked_yaw


def shown_pose(faces: np.ndarray, asked_yaw: np.ndarray) -> dict:
    """The |yaw| the faces show (dlib's 68 points) and how many show the group asked."""
    from vigface.evaluation.shown_pose import ShownPose
    from vigface.pose import YAW_BINS, yaw_bin, yaw_group

    shown = ShownPose().yaw(faces)
    same = [
        yaw_group(YAW_BINS[a]) == yaw_group(YAW_BINS[b])
        for a, b in zip(yaw_bin(asked_yaw), yaw_bin(shown), strict=True)
    ]
    return {
        "asked_mean_abs_yaw": round(float(np.abs(asked_yaw).mean()), 1),
        "shown_mean_abs_yaw": round(float(np.abs(shown).mean()), 1),
        "shown_in_asked_group": round(float(np.mean(same)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="store name or folder")
    ap.add_argument("--data", action="append", default=[], type=Path, help="a dataset folder")
    ap.add_argument("--real", type=Path, default=SHARED / "dev")
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--images-per-identity", type=int, default=8)
    ap.add_argument("--pose", default="match_training", help="a preset or JSON bin weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/face_quality"))
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a sampler setting over the card's (steps=10, guidance=3, pose_guidance=2, ...)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pose = json.loads(args.pose) if args.pose.startswith("{") else args.pose
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.set)}
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.identities * args.images_per_identity
    rows = []
    if args.real.is_dir():
        real, _ = AlignedFaceFolder.scan(args.real).load_array(112)
        real = real[np.random.default_rng(args.seed).choice(len(real), max(n, 256), False)]
        rows.append({"source": "real", **quality_summary(real, (14, 16))})
    for model in args.model:
        faces, cos, period, rate, asked = draw(
            model,
            args.identities,
            args.images_per_identity,
            pose,
            args.seed,
            args.batch_size,
            overrides,
        )
        periods = tuple(sorted({14, period}))
        row = {"source": model, "grid_px": period, **quality_summary(faces, periods)}
        row["seam_ratio_own_grid"] = row[f"seam_ratio_{period}px"]
        row |= {"fr_cos_own_mean": round(float(cos.mean()), 4), "img_per_s": round(rate, 3)}
        row |= shown_pose(faces, asked) | {"sampler": overrides}
        rows.append(row)
        tag = "".join(f"_{k}{v}" for k, v in overrides.items())
        sheet = args.out / f"{Path(model).name}{tag}_sheet.png"
        per = args.images_per_identity
        contact_sheet([faces[i * per : (i + 1) * per] for i in range(args.identities)], sheet, per)
        row["sheet"] = str(sheet)
    for folder in args.data:
        images, _ = AlignedFaceFolder.scan(folder / "imagefolder").load_array(112)
        rows.append({"source": str(folder), **quality_summary(images, (14, 16))})
    keys = ["images", "seam_ratio_14px", "seam_ratio_16px", "detail_above_32px", "face_found",
            "face_well_placed", "fr_cos_own_mean"]  # fmt: skip
    print(f"{'source':<28}" + "".join(f"{k[:16]:>17}" for k in keys))
    for r in rows:
        print(f"{r['source'][-28:]:<28}" + "".join(f"{str(r.get(k, '')):>17}" for k in keys))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
