"""1:1 verification accuracy with insightface's ``verification.py`` protocol.

Embeddings are those of image + flipped image, L2-normalised. For each of 10 folds (KFold
without shuffling, as insightface) the squared-distance threshold in ``arange(0, 4, 0.01)``
that maximises accuracy on the other 9 folds is applied to the held-out fold; accuracy is
the mean over folds and ``accuracy_std`` its standard deviation. ``tar_at_far_1e-3`` is the
true-accept rate at the largest threshold whose false-accept rate over all impostor pairs is
at most 1e-3 (with 1,500 impostors that allows one false accept).
"""

from __future__ import annotations

import numpy as np


def _kfold(n: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(n)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [
        (np.concatenate([idx[: bounds[i]], idx[bounds[i + 1] :]]), idx[bounds[i] : bounds[i + 1]])
        for i in range(k)
    ]


def _accuracy(threshold: float, dist: np.ndarray, issame: np.ndarray) -> float:
    return float(np.mean((dist < threshold) == issame))


def verification_metrics(emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, folds: int = 10):
    """Accuracy (10-fold), its std, the best threshold and TAR at FAR=1e-3."""
    emb_a, emb_b, issame = np.asarray(emb_a), np.asarray(emb_b), np.asarray(issame, bool)
    dist = np.sum((emb_a - emb_b) ** 2, axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accs, best = [], []
    for train, test in _kfold(len(issame), folds):
        train_acc = [_accuracy(t, dist[train], issame[train]) for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        best.append(t)
        accs.append(_accuracy(t, dist[test], issame[test]))
    sims = 1 - dist / 2  # cosine of unit vectors
    impostor = np.sort(sims[~issame])[::-1]
    allowed = int(np.floor(1e-3 * len(impostor)))
    thr = impostor[allowed] if allowed < len(impostor) else -1.0
    tar = float(np.mean(sims[issame] > thr)) if issame.any() else float("nan")
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(best)),
        "tar_at_far_1e-3": tar,
        "pairs": int(len(issame)),
    }


def evaluate_pairs(model, images: np.ndarray, issame: np.ndarray) -> dict:
    """Metrics of an :class:`vigface.fr_model.FRModel` on images ``2i, 2i+1`` per pair."""
    emb = model.embed(images, flip=True).numpy()
    return verification_metrics(emb[0::2], emb[1::2], issame)
