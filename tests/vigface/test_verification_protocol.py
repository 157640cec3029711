import numpy as np
import torch

from vigface.evaluation.orthogonality import orthogonality
from vigface.evaluation.verification import _kfold, verification_metrics


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kfold_matches_sklearn_order():
    folds = _kfold(10, 3)
    assert [t.tolist() for _, t in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(len(a) + len(b) == 10 for a, b in folds)


def test_perfectly_separable_pairs_score_one():
    rng = np.random.default_rng(0)
    a = _unit(rng.normal(size=(600, 16)))
    issame = np.arange(600) % 2 == 0
    b = np.where(
        issame[:, None], a + 0.01 * rng.normal(size=a.shape), _unit(rng.normal(size=a.shape))
    )
    m = verification_metrics(a, _unit(b), issame)
    assert m["accuracy"] == 1.0 and m["tar_at_far_1e-3"] == 1.0


def test_random_embeddings_score_chance():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.normal(size=(3000, 64))), _unit(rng.normal(size=(3000, 64)))
    m = verification_metrics(a, b, np.arange(3000) % 2 == 0)
    assert 0.45 < m["accuracy"] < 0.56
    assert m["tar_at_far_1e-3"] < 0.05


def test_orthogonality_stats():
    real = torch.eye(4)[:3]  # mutually orthogonal
    virtual = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    o = orthogonality(real, virtual)
    assert o["r_to_r"]["max"] == 0.0
    assert o["v_to_r"]["max"] == 1.0 and o["v_to_r"]["mean"] == 0.5
    assert o["v_to_v"]["mean"] == 0.0
