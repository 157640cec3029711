"""The paper's three dataset attributes and the leakage statistics, from FR embeddings.

All inputs are L2-normalised embeddings ``emb`` (N, D) with integer class labels (N,).

* **Class consistency** ``C_k = mean_k mean_{i<j in k} cos(f_i, f_j)``: the mean pairwise
  cosine inside a class, averaged over classes (classes with one image are skipped).
* **Class separability** ``S_k = mean_k mean_{l != k} (1 - cos(c_k, c_l))`` with
  ``c_k = normalise(mean_{i in k} f_i)``: the mean cosine distance between a class centre and
  the other (negative) class centres. ``S_k_nearest`` uses only the nearest negative centre,
  the stricter reading.
* **Intra-class diversity** ``D_k = mean_k Var_{i in k} CR_i`` with CR-FIQA's certainty ratio
  ``CR_i = CCS_i / (NNCCS_i + 1 + eps)``, ``CCS_i = cos(f_i, c_{y_i})`` the similarity to the
  own class centre and ``NNCCS_i = max_{l != y_i} cos(f_i, c_l)`` to the nearest other centre
  (CR-FIQA computes both against the FR model's class prototypes; for a generated set the
  class centres play that role, or the conditioning prototypes when given).

An attribute that a set cannot define (C_k and D_k need a class with two images, S_k two
classes) is ``None``, never NaN, and :func:`dataset_attributes` says why under ``undefined``:
NaN is not JSON, and PostgreSQL refuses it.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_centres(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, centres): the sorted class ids and their normalised mean embeddings."""
    classes, inv = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), emb.shape[1]))
    np.add.at(sums, inv, emb)
    return classes, _normalise(sums)


def class_consistency(emb: np.ndarray, labels: np.ndarray) -> float | None:
    emb = _normalise(emb)
    vals = []
    for c in np.unique(labels):
        f = emb[labels == c]
        n = len(f)
        if n < 2:
            continue
        s = f @ f.T
        vals.append((s.sum() - np.trace(s)) / (n * (n - 1)))
    return float(np.mean(vals)) if vals else None


def class_separability(emb: np.ndarray, labels: np.ndarray) -> dict:
    _, centres = class_centres(_normalise(emb), labels)
    k = len(centres)
    if k < 2:
        return {"S_k": None, "S_k_nearest": None}
    sim = centres @ centres.T
    off = ~np.eye(k, dtype=bool)
    nearest = np.where(off, sim, -np.inf).max(1)
    return {
        "S_k": float((1 - sim[off]).mean()),
        "S_k_nearest": float((1 - nearest).mean()),
    }


def certainty_ratio(emb: np.ndarray, labels: np.ndarray, centres: np.ndarray | None = None):
    """CR-FIQA certainty ratio per image. ``centres`` (C, D) are indexed by ``labels``;
    by default the class centres of ``emb``."""
    emb = _normalise(emb)
    if centres is None:
        classes, centres = class_centres(emb, labels)
        idx = np.searchsorted(classes, labels)
    else:
        centres, idx = _normalise(centres), np.asarray(labels)
    sim = emb @ centres.T
    rows = np.arange(len(emb))
    ccs = sim[rows, idx]
    sim[rows, idx] = -np.inf
    nnccs = sim.max(1) if centres.shape[0] > 1 else np.zeros(len(emb))
    return ccs / (nnccs + 1 + EPS)


def intra_class_diversity(emb: np.ndarray, labels: np.ndarray, centres=None) -> float | None:
    cr = certainty_ratio(emb, labels, centres)
    vals = [cr[labels == c].var() for c in np.unique(labels) if (labels == c).sum() > 1]
    return float(np.mean(vals)) if vals else None


SINGLE_IMAGES = "every identity has one image: no pair of images inside an identity"
SINGLE_CLASS = "one identity: no other identity centre to compare with"


def dataset_attributes(emb: np.ndarray, labels: np.ndarray) -> dict:
    """C_k, S_k, S_k_nearest and D_k; the undefined ones are None, with the reason."""
    attrs = {
        "C_k": class_consistency(emb, labels),
        **class_separability(emb, labels),
        "D_k": intra_class_diversity(emb, labels),
    }
    reasons = {"C_k": SINGLE_IMAGES, "D_k": SINGLE_IMAGES, "S_k": SINGLE_CLASS}
    reasons["S_k_nearest"] = SINGLE_CLASS
    undefined = {k: reasons[k] for k, v in attrs.items() if v is None}
    return attrs | ({"undefined": undefined} if undefined else {})


def nearest_similarity(
    queries: np.ndarray, gallery: np.ndarray, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum cosine of each query to any gallery row, and which row, in bounded memory.

    ``gallery`` may be a memory-mapped ``.npy`` of any size: it is read ``chunk`` rows at a time.
    """
    q = _normalise(queries).astype(np.float32)
    best = np.full(len(q), -np.inf, np.float32)
    arg = np.zeros(len(q), np.int64)
    for start in range(0, gallery.shape[0], chunk):
        g = _normalise(np.asarray(gallery[start : start + chunk])).astype(np.float32)
        s = q @ g.T
        j = s.argmax(1)
        v = s[np.arange(len(q)), j]
        better = v > best
        best[better], arg[better] = v[better], j[better] + start
    return best, arg


def summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return {"n": 0}
    q = np.percentile(x, [1, 5, 50, 95, 99])
    return {
        "n": int(len(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "p01": q[0],
        "p05": q[1],
        "p50": q[2],
        "p95": q[3],
        "p99": q[4],
        "max": float(x.max()),
    }
