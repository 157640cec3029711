"""The capacity of a model, read off what an outside judge sees in its delivered faces.

For populations of ``--populations`` identities (nested random subsets of a delivered
dataset, ``--images-per-identity`` images each), dlib's face descriptor (a model that took no
part in training) gives the mean distance from each identity's centre to the nearest other
centre ("between"; larger = more distinct), the mean distance between images of one identity
("within") and the distance from each centre to the nearest real person ("to real").
Beside it, the same figures for real people: every person of ``--real`` folders with at least
that many images, the same number of images each, degraded to ``--resolution`` (the side the
generator draws at; 112 = no degradation) exactly as the writer delivers a generated face.
Real people's "between" is fitted ``a + b ln N`` to carry it past the real set's size; the
capacity is the largest population up to which the delivered identities stay at least that
distinct, within a tolerance for noise (the rule: ``vigface/evaluation/capacity.py``).
``--card ENTRY`` records it in a generator's card, with the curve in its ``measurements/``.

    vigface generate --model runs/store/demo100k --identities 5000 --images-per-identity 2 \\
        --out runs/judgecurve/draw5k
    python bench/judge_capacity.py --drawn runs/judgecurve/draw5k \\
        --real ../shared/data/lfw112/train,../shared/data/lfw112/dev --resolution 32 \\
        --out curve.png --card model_store/models/demo

Descriptors are cached (``--cache``; numbers and names only, no pixels), so re-plotting or
adding populations does not embed again. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from vigface.data import AlignedFaceFolder
from vigface.evaluation.capacity import fit_log_curve, read_capacity, record_judge_capacity
from vigface.evaluation.judge import OutsideJudge, degrade
from vigface.evaluation.judge_figures import identity_distances


def pick_images(root: Path, per_identity: int, seed: int, prefix: str | None = None):
    """(paths, identity names) of ``per_identity`` seeded images of every identity of an
    ImageFolder that has at least that many; names are ``<prefix>/<class>`` (prefix: the
    folder's name) so that identities of several folders never merge."""
    ds = AlignedFaceFolder.scan(root)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for s in ds.samples:
        by_class.setdefault(s.label, []).append(s.path)
    paths, names = [], []
    for label, files in sorted(by_class.items()):
        if len(files) >= per_identity:
            for i in sorted(rng.choice(len(files), per_identity, replace=False)):
                paths.append(files[i])
                names.append(f"{prefix or root.name}/{ds.classes[label]}")
    return paths, np.asarray(names)


def embed_paths(judge, paths, resolution: int, cache: Path) -> np.ndarray:
    """Judge descriptors of the images at ``paths`` (degraded to ``resolution`` first when
    below 112), cached by the file list."""
    from PIL import Image

    key = hashlib.sha256(
        ("|".join(map(str, paths)) + f"|{resolution}|{judge.name}").encode()
    ).hexdigest()[:16]
    path = cache / f"judge_capacity_{key}.npy"
    if path.is_file():
        return np.load(path)
    out = []
    for start in range(0, len(paths), 256):
        imgs = np.stack([
            np.asarray(Image.open(p).convert("RGB").resize((112, 112), Image.BICUBIC))
            for p in paths[start : start + 256]
        ])  # fmt: skip
        if resolution < 112:
            imgs = degrade(imgs, resolution)
        out.append(judge.embed(imgs))
        print(f"  embedded {min(start + 256, len(paths))}/{len(paths)}", flush=True)
    emb = np.concatenate(out)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def population_figures(emb, names, n: int, repeats: int, seed: int, real_emb=None,
                       real_names=None) -> dict:  # fmt: skip
    """Mean figures over ``repeats`` random populations of ``n`` identities, and the standard
    deviation of "between" over them (``between_sd``; 0 for a single population)."""
    people = np.unique(names)
    runs = []
    for r in range(repeats if n < len(people) else 1):
        pick = np.random.default_rng([seed, n, r]).choice(len(people), n, replace=False)
        keep = np.isin(names, people[pick])
        same = real_names is not None and names is real_names  # real people: not themselves
        exclude = sorted(people[pick]) if same else None
        runs.append(identity_distances(emb[keep], names[keep], real_emb, real_names,
                                       exclude_same_name=exclude))  # fmt: skip
    keys = [k for k in ("within", "between", "centre_to_real") if k in runs[0]]
    out = {k: round(float(np.mean([x[k] for x in runs])), 4) for k in keys}
    out["between_sd"] = (
        round(float(np.std([x["between"] for x in runs], ddof=1)), 4) if len(runs) > 1 else 0.0
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--drawn",
        required=True,
        help="delivered dataset folders, comma-separated (disjoint identities)",
    )
    ap.add_argument("--real", required=True, help="comma-separated real ImageFolders")
    ap.add_argument("--images-per-identity", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=32, help="the generator's drawing side")
    ap.add_argument("--populations", default="100,200,500,1000,2000,5000,10000,20000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sigmas", type=float, default=2.0, help="tolerance, in combined spreads")
    ap.add_argument("--max-identities", type=int, help="embed only this many delivered ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("runs/judge_cache"))
    ap.add_argument("--out", type=Path, help="PNG of the curves")
    ap.add_argument(
        "--card",
        action="append",
        default=[],
        type=Path,
        help="generator entry whose card records the capacity (repeatable)",
    )
    ap.add_argument("--measured-on", help="the entry the faces came from (for the card)")
    args = ap.parse_args()
    if args.card and not args.out:
        ap.error("--card needs --out (the card points at the figure)")
    for entry in args.card:
        if not (entry / "model_card.json").is_file():
            ap.error(f"--card {entry}: no model_card.json there")

    judge = OutsideJudge()
    m = args.images_per_identity
    real_paths, real_names = [], []
    for root in args.real.split(","):
        p, n = pick_images(Path(root), m, args.seed)
        real_paths += p
        real_names += list(n)
    real_names = np.asarray(real_names)
    print(f"real: {len(np.unique(real_names))} people with >= {m} images", flush=True)
    real_emb = embed_paths(judge, real_paths, args.resolution, args.cache)
    syn_emb, syn_names = [], []
    for drawn in map(Path, args.drawn.split(",")):
        folder = drawn / "imagefolder" if (drawn / "imagefolder").is_dir() else drawn
        if not folder.is_dir():
            ap.error(f"--drawn {drawn}: not a folder")
        paths, names = pick_images(folder, m, args.seed, prefix=drawn.name)
        syn_emb.append(embed_paths(judge, paths, 112, args.cache))  # delivered as they are
        syn_names.append(names)
    syn_emb, syn_names = np.concatenate(syn_emb), np.concatenate(syn_names)
    if args.max_identities:
        keep = np.isin(syn_names, np.unique(syn_names)[: args.max_identities])
        syn_emb, syn_names = syn_emb[keep], syn_names[keep]
    print(f"delivered: {len(np.unique(syn_names))} identities", flush=True)

    pops = [int(x) for x in args.populations.split(",")]
    n_real, n_syn = len(np.unique(real_names)), len(np.unique(syn_names))
    real_rows = {n: population_figures(real_emb, real_names, n, args.repeats, args.seed,
                                       real_emb, real_names)
                 for n in [*pops, n_real] if n <= n_real}  # fmt: skip
    syn_rows = {n: population_figures(syn_emb, syn_names, n, args.repeats, args.seed,
                                      real_emb, real_names)
                for n in [*pops, n_syn] if n <= n_syn}  # fmt: skip
    fit = fit_log_curve({n: r["between"] for n, r in real_rows.items()})
    reading = read_capacity(
        {n: r["between"] for n, r in syn_rows.items()},
        {n: r["between_sd"] for n, r in syn_rows.items()},
        fit,
        args.sigmas,
    )
    result = {
        "judge": judge.name,
        "images_per_identity": m,
        "real_resolution": args.resolution,
        "real": {str(k): v for k, v in real_rows.items()},
        "delivered": {str(k): v for k, v in syn_rows.items()},
        "real_between_fit": {
            "a": round(fit.a, 4),
            "b_per_ln_n": round(fit.b, 4),
            "residual_rms": round(fit.residual_rms, 4),
        },  # fmt: skip
        "rows": reading.rows,
        "capacity": reading.capacity,
        "bounded": reading.bounded,
        "measured_up_to": reading.measured_up_to,
        "capacity_rule": f"largest population up to which every measured population's "
        f"between-centre distance is at least real people's fit less {args.sigmas:g} combined "
        "spreads (fit residual, random populations)",
    }
    print(
        f"{'N':>7} {'real':>7} {'fit':>7} {'drawn':>7} {'tol':>6} {'within r/d':>13} {'to real':>7}"
    )
    tol = {r["identities"]: r["tolerance"] for r in reading.rows}
    for n in sorted(set(real_rows) | set(syn_rows)):
        r, s = real_rows.get(n, {}), syn_rows.get(n, {})
        print(f"{n:>7} {r.get('between', ''):>7} {round(fit(n), 4):>7} {s.get('between', ''):>7} "
              f"{tol.get(n, ''):>6} {r.get('within', '')!s:>6}/{s.get('within', '')!s:<6} "
              f"{s.get('centre_to_real', '')!s:>7}")  # fmt: skip
    verdict = "" if reading.bounded else " or more: no measured population failed"
    print(f"capacity: {reading.capacity}{verdict} (measured up to {reading.measured_up_to})")
    if args.out:
        plot(args.out, real_rows, syn_rows, fit, reading, args.resolution, m)
    for entry in args.card:
        summary = {"judge": judge.name, "identities": reading.capacity,
                   "measured_up_to": reading.measured_up_to, "bounded": reading.bounded,
                   "images_per_identity": m, "real_resolution": args.resolution,
                   "tolerance_sigmas": args.sigmas,
                   "measured_on": args.measured_on or args.drawn}  # fmt: skip
        record_judge_capacity(entry, summary, result, args.out)
        print(f"recorded in {entry}/model_card.json", flush=True)
    print(json.dumps(result))


def plot(out: Path, real_rows, syn_rows, fit, reading, resolution: int, m: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(list(real_rows), [v["between"] for v in real_rows.values()], "o-",
            label=f"real people (LFW, {resolution} px)")  # fmt: skip
    xs = np.geomspace(min([*real_rows, *syn_rows]), max([*real_rows, *syn_rows]), 50)
    ys = np.array([fit(x) for x in xs])
    ax.plot(xs, ys, "--", color="C0", label="real, fitted a + b ln N")
    band = [r["tolerance"] for r in reading.rows]
    ns = [r["identities"] for r in reading.rows]
    ax.fill_between(ns, [fit(n) - t for n, t in zip(ns, band, strict=True)],
                    [fit(n) + t for n, t in zip(ns, band, strict=True)], color="C0", alpha=0.15,
                    label="tolerance")  # fmt: skip
    ax.plot(list(syn_rows), [v["between"] for v in syn_rows.values()], "s-", color="C1",
            label="delivered identities")  # fmt: skip
    if reading.capacity:
        ax.axvline(reading.capacity, color="C1", ls=":", label=f"capacity {reading.capacity:,}"
                   + ("" if reading.bounded else "+"))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("identities in the population")
    ax.set_ylabel("dlib: mean distance to the nearest other centre")
    ax.set_title(f"Distinctness by population ({m} images each; higher: more distinct)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
