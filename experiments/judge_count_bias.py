"""Does the judge's ``between`` depend on how many images each identity has? (issue 16)

``between`` is the distance from each identity centre (the normalised mean descriptor) to the
nearest other centre. A centre estimated from few images is noisy, and noise adds distance, so
identities with few images look farther apart than the same identities with many. The judge's
real reference (LFW-112 dev people, 4.8 images each, half of them 2) and a delivered dataset
(10 per identity at the defaults) differ exactly there.

This measures the effect on the same people at several counts:

* ``real``: the ``--people`` train people with the most images (dlib took no part in training
  anything, so train people are as good as held-out ones here), at most ``--max-images``
  each, degraded to ``--resolution``; every person's images subsampled to k per person;
* ``synthetic`` (with ``--data``): a delivered dataset's identities subsampled the same way.

Each figure is the mean over ``--repeats`` seeded subsamples. Prints a table; the last line is
JSON. About 11 images/s on one core for the embedding.

    python experiments/judge_count_bias.py --data runs/judge/matched_200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vigface.data import AlignedFaceFolder
from vigface.data.imagefolder import load_rgb
from vigface.evaluation.judge import OutsideJudge, degrade, embed_folder
from vigface.evaluation.judge_figures import identity_distances, keep_counts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def at_most(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most ``k`` images of every class (a seeded random choice)."""
    return keep_counts(labels, np.full(len(np.unique(labels)), k), rng)


def curve(emb: np.ndarray, labels: np.ndarray, counts: list[int], repeats: int) -> dict:
    out = {}
    for k in counts:
        runs = []
        for r in range(repeats):
            keep = at_most(labels, k, np.random.default_rng(r))
            runs.append(identity_distances(emb[keep], labels[keep]))
        out[str(k)] = {
            key: round(float(np.mean([x[key] for x in runs])), 4) for key in ("within", "between")
        }
    return out


def real_people(root: Path, people: int, max_images: int, resolution: int, judge: OutsideJudge):
    """The ``people`` people with the most images, at most ``max_images`` each (seeded)."""
    ds = AlignedFaceFolder.scan(root)
    labels = np.asarray([s.label for s in ds.samples])
    chosen = np.argsort(-np.bincount(labels), kind="stable")[:people]
    pool = np.flatnonzero(np.isin(labels, chosen))
    keep = pool[at_most(labels[pool], max_images, np.random.default_rng(0))]
    images = np.stack([load_rgb(ds.samples[i].path, 112) for i in keep])
    return judge.embed(degrade(images, resolution)), labels[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=SHARED / "train")
    ap.add_argument("--people", type=int, default=120, help="train people with >= 10 images: 120")
    ap.add_argument("--max-images", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--data", type=Path, help="a delivered dataset (its imagefolder/)")
    ap.add_argument("--counts", default="2,3,5,10")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    judge = OutsideJudge()
    result = {"counts": counts, "repeats": args.repeats, "resolution": args.resolution}
    emb, labels = real_people(args.real, args.people, args.max_images, args.resolution, judge)
    result["real"] = {
        "people": int(len(np.unique(labels))),
        "by_count": curve(emb, labels, counts, args.repeats),
    }
    if args.data:
        folder = args.data / "imagefolder" if (args.data / "imagefolder").is_dir() else args.data
        emb, names, _ = embed_folder(judge, folder)
        result["synthetic"] = {
            "identities": int(len(np.unique(names))),
            "by_count": curve(emb, names, counts, args.repeats),
        }
    print("| set | images per identity | within | between |\n|---|---|---|---|")
    for key in ("real", "synthetic"):
        for k, fig in result.get(key, {}).get("by_count", {}).items():
            print(f"| {key} | {k} | {fig['within']:.4f} | {fig['between']:.4f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
