"""The outside judge's figures: identity distances of a set of descriptors, and real people's
at the same identity and image counts.

Distances are Euclidean between unit descriptors (dlib's own same-person threshold is 0.6 on
raw descriptors, which are close to unit length):

* ``within``: mean over identities of the mean pairwise distance of its images;
* ``between``: mean over identities of the distance from its centre (normalised mean
  descriptor) to the nearest other identity centre of the same set;
* ``centre_to_real``: mean over identities of the distance from its centre to the nearest
  image of a real person (for real people: of another real person);
* ``spread``: mean distance between all pairs of identity centres. ``between`` looks at each
  identity's nearest neighbour only; a population can pass it and still sit in a smaller
  region of face space than real people do, which ``spread`` shows.

``between`` depends on how many identities a set holds (more identities, nearer neighbours), so
real people are always measured with as many identities as the synthetic set, sampled from
held-out people, at the generator's resolution (:func:`degrade`). It also depends on how many
images each identity has: a centre averaged from few images is noisy, and noise adds distance
(the same 120 real people: 0.346 at 2 images each, 0.298 at 10;
``experiments/judge_count_bias.py``).
Held-out people have few images (LFW-112 dev: 4.8 on average, half of them 2) and a dataset
many, so a set is compared at the real people's image counts (:func:`count_matched`): each
identity keeps as many images as the real person it is paired with, both sides capped at the
set's own images per identity.
"""

from __future__ import annotations

import numpy as np

from vigface.evaluation.metrics import class_centres

JUDGE_NAME = "dlib_face_recognition_resnet_model_v1"  # the outside judge these figures are by


def unit_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances of unit vectors (rows of ``a`` against rows of ``b``)."""
    return np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))


def identity_distances(
    emb: np.ndarray,
    labels: np.ndarray,
    real_emb: np.ndarray | None = None,
    real_labels: np.ndarray | None = None,
    exclude_same_name: list[str] | None = None,
) -> dict:
    """The three figures of a set of identities (see the module docstring). ``real_emb`` is
    the gallery of real people's images; when the set *is* real people, pass their names in
    ``exclude_same_name`` (one per class, sorted label order) and ``real_labels`` as names so a
    person's own images in the gallery do not count."""
    emb, labels = np.asarray(emb, np.float32), np.asarray(labels)
    classes, centres = class_centres(emb, labels)
    within = []
    for k in classes:
        f = emb[labels == k]
        if len(f) > 1:
            d = unit_distances(f, f)
            within.append(d[np.triu_indices(len(f), 1)].mean())
    cc = unit_distances(centres, centres)
    n = len(classes)
    spread = float((cc.sum() - np.trace(cc)) / (n * (n - 1))) if n > 1 else float("nan")
    np.fill_diagonal(cc, np.inf)
    out = {
        "identities": int(n),
        "images": int(len(emb)),
        "within": float(np.mean(within)) if within else float("nan"),
        "between": float(cc.min(1).mean()) if n > 1 else float("nan"),
        "spread": spread,
    }
    if real_emb is not None:
        d = unit_distances(centres, np.asarray(real_emb, np.float32))
        if exclude_same_name is not None:
            names = np.asarray(real_labels)
            for i, name in enumerate(exclude_same_name):
                d[i, names == name] = np.inf
        out["centre_to_real"] = float(d.min(1).mean())
    return out


# per-person image caps the calibration also measures, so that a set with fewer images per
# identity than some held-out people compares at equal counts on both sides
COUNT_CAPS = (2, 3, 5, 10, 20)


def people_draws(people: int, identities: int, repeats: int, seed: int) -> list[np.ndarray]:
    """The calibration's draws: per repeat, the sorted indices of the held-out people (in name
    order) it compares. :func:`count_matched` replays them to pair identities with counts."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(people, identities, replace=False)) for _ in range(repeats)]


def keep_counts(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping ``counts[j]`` images (a seeded choice) of the j-th class in sorted order."""
    keep = []
    for c, n in zip(np.unique(labels), counts, strict=True):
        members = np.flatnonzero(labels == c)
        keep.append(rng.choice(members, min(int(n), len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def _mean_figures(runs: list[dict]) -> dict:
    keys = [k for k in ("within", "between", "spread", "centre_to_real") if k in runs[0]]
    return {k: float(np.mean([r[k] for r in runs])) for k in keys}


def reference_figures(
    emb: np.ndarray,
    names: np.ndarray,
    gallery_emb: np.ndarray | None,
    gallery_names: np.ndarray | None,
    identities: int,
    resolution: int,
    seed: int = 0,
    repeats: int = 5,
) -> dict:
    """The figures for ``identities`` held-out real people (random draws, averaged over
    ``repeats``) from their descriptors ``emb`` (images degraded to ``resolution`` first, see
    :func:`degrade`) and person ``names``. ``gallery_emb`` holds real images (other people) at
    the same resolution; without it there is no ``centre_to_real``.

    Also stores each person's image count (``counts``, name order: numbers only) and the
    figures with every person capped at each of :data:`COUNT_CAPS` images (``capped``), which
    :func:`count_matched` needs to compare a set at equal counts."""
    names = np.asarray(names)
    people, counts = np.unique(names, return_counts=True)
    k = min(identities, len(people))
    draws = people_draws(len(people), k, repeats, seed)

    def figures(cap: int | None) -> dict:
        runs = []
        for r, idx in enumerate(draws):
            keep = np.flatnonzero(np.isin(names, people[idx]))
            if cap is not None:
                caps = np.minimum(counts[idx], cap)
                keep = keep[keep_counts(names[keep], caps, np.random.default_rng([seed, r]))]
            runs.append(
                identity_distances(
                    emb[keep],
                    names[keep],
                    gallery_emb,
                    gallery_names,
                    exclude_same_name=list(people[idx]),
                )
            )
        return _mean_figures(runs) | {"identities": int(k), "resolution": int(resolution)}

    ref = figures(None)
    ref.update({"repeats": repeats, "seed": seed, "counts": [int(c) for c in counts]})
    ref["capped"] = {str(c): figures(c) for c in COUNT_CAPS if c < counts.max()}
    return ref


def count_matched(
    emb: np.ndarray, labels: np.ndarray, real: dict, real_emb: np.ndarray | None = None
) -> tuple[dict, dict] | None:
    """A set's figures at the image counts of the real people ``real`` was measured on.

    Replays the calibration's draws: in each repeat the set's identities are paired (in a
    seeded random order) with the drawn people and keep as many images as each person has,
    so both sides average centres over the same counts. When the set has fewer images per
    identity than some people, both sides are capped at the largest of :data:`COUNT_CAPS` it
    can fill. Returns (figures, the real figures they compare with), or None when the
    calibration has no counts (an older card) or the identity counts differ."""
    counts = real.get("counts")
    labels = np.asarray(labels)
    classes, per_class = np.unique(labels, return_counts=True)
    if not counts or len(classes) != real.get("identities"):
        return None
    counts = np.asarray(counts)
    fewest = int(per_class.min())
    if fewest >= counts.max():
        cap, ref = None, real
    else:
        cap = max((c for c in COUNT_CAPS if c <= fewest), default=None)
        ref = (real.get("capped") or {}).get(str(cap))
        if ref is None:
            return None
    seed = int(real.get("seed", 0))
    runs, used = [], []
    for r, idx in enumerate(people_draws(len(counts), len(classes), int(real["repeats"]), seed)):
        want = counts[idx] if cap is None else np.minimum(counts[idx], cap)
        rng = np.random.default_rng([seed, r])
        keep = keep_counts(labels, rng.permutation(want), rng)
        runs.append(identity_distances(emb[keep], labels[keep], real_emb))
        used.append(len(keep) / len(classes))
    ours = _mean_figures(runs) | {"identities": int(len(classes)), "images": int(len(emb))}
    ours["images_per_identity"] = {"as_real_people": float(np.mean(used)), "cap": cap}
    return ours, ref


def verdict(synthetic: dict, real: dict) -> dict:
    """Compare a synthetic set with real people; a plain sentence says what the numbers mean.
    Without a real gallery (no ``centre_to_real``) it says so instead of guessing."""
    distinct = synthetic["within"] <= real["within"] and synthetic["between"] >= real["between"]
    counts = synthetic.get("images_per_identity")
    where = f"at {real['resolution']} px" + (
        f", both with the real people's image counts ({counts['as_real_people']:.1f} per "
        "identity on average)"
        if counts
        else ""
    )
    if synthetic.get("counts_matched") is False:
        where += (
            " (image counts per identity not matched: the calibration predates it or the "
            "identity counts differ; between reads low for identities with more images than "
            "the real people's)"
        )
    sentence = (
        f"By an independent FR model ({JUDGE_NAME}), the identities are "
        + ("as distinct as real people" if distinct else "less distinct than real people")
        + f" (within {synthetic['within']:.3f} vs {real['within']:.3f}, between centres "
        f"{synthetic['between']:.3f} vs {real['between']:.3f})"
    )
    spread = None
    if "spread" in synthetic and "spread" in real:  # calibrations before it lack it
        spread = bool(synthetic["spread"] >= real["spread"])
        sentence += (
            ", "
            + ("as spread out as real people" if spread else "more crowded than real people")
            + f" (mean distance between centres {synthetic['spread']:.3f} vs "
            f"{real['spread']:.3f})"
        )
    if "centre_to_real" not in synthetic or "centre_to_real" not in real:
        sentence += (
            f", {where}; nearness to real people was not measured (it needs a gallery of real "
            "people, --real-data or VIGFACE_JUDGE_REAL_GALLERY in the service, and a "
            "calibration that measured it)."
        )
        return {"as_distinct_as_real": bool(distinct), "as_far_as_real": None,
                "as_spread_as_real": spread, "text": sentence}  # fmt: skip
    far = synthetic["centre_to_real"] >= real["centre_to_real"]
    sentence += (
        " and "
        + (
            "as far from real people as real people are from each other"
            if far
            else "closer to real people than real people are to each other"
        )
        + f" (centre to nearest real {synthetic['centre_to_real']:.3f} vs "
        f"{real['centre_to_real']:.3f}), {where}."
    )
    return {"as_distinct_as_real": bool(distinct), "as_far_as_real": bool(far),
            "as_spread_as_real": spread, "text": sentence}  # fmt: skip


def compare(
    emb: np.ndarray, labels: np.ndarray, real: dict, real_emb: np.ndarray | None = None
) -> tuple[dict, dict]:
    """(the set's figures, real people's) to put side by side: at equal image counts where the
    calibration allows (:func:`count_matched`; the figures over every image are kept as
    ``as_drawn``), else over every image, with ``counts_matched`` False."""
    as_drawn = identity_distances(emb, labels, real_emb)
    matched = count_matched(emb, labels, real, real_emb)
    if matched is None:
        ours, shown = as_drawn | {"counts_matched": False}, real
    else:
        ours, shown = matched[0] | {"counts_matched": True, "as_drawn": as_drawn}, matched[1]
    if "counts" in shown:  # the figures only: no per-person counts in every job's report
        shown = {k: v for k, v in shown.items() if k not in ("counts", "capped")}
    return ours, shown
