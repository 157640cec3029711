"""How much of real people's distinctness does the generator keep? (issue 16, item 2)

The independent judge finds virtual identities less distinct than real people (between-centre
distance short of real people's). Two causes would look the same from a virtual dataset alone:
virtual prototypes that are too alike, or a generator that draws any two prototypes as more
alike faces than the people behind them. This separates them on people the generator was
trained on, where the answer is known:

* ``real``: up to ``--images`` real training images each of the ``--identities`` train people
  with the most images, degraded to the generator's resolution as the judge's calibration is;
* ``drawn_from_real``: the same people drawn from their own rows of W_R, one image per real
  image with that image's landmarks (same poses, same counts), at the card's sampler defaults,
  no filters, written as the service writes them (bicubic to 112 px, JPEG 95);
* ``drawn_from_virtual``: as many rows of W_V (the first ones, as the allocator hands them
  out), the same landmark lists, same settings.

All three are embedded by the judge (dlib, which took no part in training). ``kept`` is the
generator's between-centre distance over real people's on the same people: below 1 the
generator compresses identity, and a virtual set cannot be more distinct than that ratio
allows, whatever its prototypes. Also prints the mean distance over all centre pairs (the
spread of the whole set, not only the nearest neighbour). Last line: JSON.

    python experiments/identity_compression.py --model demo      # about 10 min on one core
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from model_store import resolve
from vigface.data import read_landmarks_csv
from vigface.dataset.writers import encode_jpeg
from vigface.evaluation.judge import OutsideJudge, degrade
from vigface.evaluation.judge_figures import identity_distances, unit_distances
from vigface.evaluation.metrics import class_centres
from vigface.generator.artifact import Generator
from vigface.sampling import ImageRequest, Sampler, image_seed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def people(train: Path, landmarks_csv: Path, identities: int, images: int):
    """The ``identities`` train people with the most images (ties by name): per person, up to
    ``images`` (file, 5x2 landmarks) in file order."""
    rows: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for (name, file), pts in sorted(read_landmarks_csv(landmarks_csv).items()):
        rows.setdefault(name, []).append((train / name / file, pts))
    ranked = sorted(rows, key=lambda n: (-len(rows[n]), n))[:identities]
    return {n: rows[n][:images] for n in sorted(ranked)}


def centre_spread(emb: np.ndarray, labels: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of (unit) identity centres."""
    _, c = class_centres(emb, labels)
    return float(unit_distances(c, c)[np.triu_indices(len(c), 1)].mean())


def as_delivered(images: np.ndarray) -> np.ndarray:
    """Generator output as the dataset writer stores it: bicubic to 112 px, JPEG 95."""
    return np.stack(
        [np.asarray(Image.open(io.BytesIO(encode_jpeg(im))).convert("RGB")) for im in images]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument(
        "--data", type=Path, default=SHARED / "train", help="the generator's training ImageFolder"
    )
    ap.add_argument("--landmarks", type=Path, default=SHARED / "train_landmarks.csv")
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--images", type=int, default=10, help="most images per person")
    ap.add_argument("--guidance", type=float, help="default: the card's sampler_defaults")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--groups", default="drawn_from_real,drawn_from_virtual",
        help="which drawn sets (the real images are always embedded)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.identities < 2 or args.images < 2:
        raise SystemExit("--identities and --images must be at least 2")
    for p in (args.data, args.landmarks):
        if not p.exists():
            raise SystemExit(f"{p} not found")
    gen = Generator.load(resolve(args.model))
    defaults = gen.card.get("sampler_defaults", {})
    guidance = args.guidance if args.guidance is not None else defaults.get("guidance", 4.0)
    chosen = people(args.data, args.landmarks, args.identities, args.images)
    missing = [n for n in chosen if n not in gen.fr.classes]
    if missing:
        raise SystemExit(
            f"{len(missing)} people are not classes of the generator's FR: {missing[:3]}"
        )
    if args.identities > gen.fr.virtual_prototypes.shape[0]:
        raise SystemExit(f"only {gen.fr.virtual_prototypes.shape[0]} virtual prototypes")
    names = list(chosen)
    labels = np.concatenate([[i] * len(chosen[n]) for i, n in enumerate(names)])
    lms = np.stack([pts for n in names for _, pts in chosen[n]])
    real_images = np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for n in names for p, _ in chosen[n]]
    )

    sampler = Sampler(
        gen.dit, gen.scheduler, defaults.get("scheduler", "dpmsolver"), defaults.get("steps", 10),
        guidance, batch_size=64, autoencoder=gen.autoencoder,
    )  # fmt: skip
    index = {c: i for i, c in enumerate(gen.fr.classes)}
    groups = {
        "drawn_from_real": [gen.fr.real_prototypes[index[n]] for n in names],
        "drawn_from_virtual": [gen.fr.virtual_prototypes[i] for i in range(len(names))],
    }
    unknown = set(args.groups.split(",")) - set(groups)
    if unknown:
        raise SystemExit(f"--groups: unknown {sorted(unknown)}; choose from {sorted(groups)}")
    groups = {g: p for g, p in groups.items() if g in args.groups.split(",")}
    judge = OutsideJudge()
    t0 = time.time()
    emb = {"real": judge.embed(degrade(real_images, gen.dit.config.sample_size))}
    for group, protos in groups.items():
        reqs = [
            ImageRequest(protos[k].cpu().numpy(), lms[j], image_seed(args.seed, k, j))
            for j, k in enumerate(labels)
        ]
        drawn = np.concatenate([imgs for _, imgs in sampler.stream(reqs)])
        emb[group] = judge.embed(as_delivered(drawn))
    out = {
        "model": args.model,
        "identities": len(names),
        "images": int(len(labels)),
        "guidance": guidance,
        "resolution": gen.dit.config.sample_size,
    }
    print(f"{len(names)} train people, {len(labels)} images; g {guidance}, judge {judge.name}")
    print("| set | within | between (nearest centre) | all-pairs centre distance |")
    print("|---|---|---|---|")
    for group, e in emb.items():
        d = identity_distances(e, labels)
        r = {"within": round(d["within"], 4), "between": round(d["between"], 4),
             "centre_spread": round(centre_spread(e, labels), 4)}  # fmt: skip
        out[group] = r
        print(f"| {group} | {r['within']:.3f} | {r['between']:.3f} | {r['centre_spread']:.3f} |")
    for group in groups:
        out[f"{group}_kept"] = {
            k: round(out[group][k] / out["real"][k], 3)
            for k in ("within", "between", "centre_spread")
        }
    out["seconds"] = round(time.time() - t0, 1)
    if "drawn_from_real" in groups:
        kept = out["drawn_from_real_kept"]["between"]
        print(f"between kept, drawn from the same people's prototypes: {kept:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
