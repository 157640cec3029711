import numpy as np
import pytest

from vigface.evaluation.metrics import (
    certainty_ratio,
    class_consistency,
    class_separability,
    dataset_attributes,
    intra_class_diversity,
    nearest_similarity,
    summary,
)


def test_consistency_and_separability_on_known_geometry():
    # two classes on orthogonal axes, each with two images at +-angle a from its axis
    a = np.radians(30)
    emb = np.array(
        [[np.cos(a), np.sin(a), 0], [np.cos(a), -np.sin(a), 0], [0, 0, 1.0], [0, 0, 1.0]]
    )
    labels = np.array([0, 0, 1, 1])
    assert class_consistency(emb, labels) == pytest.approx((np.cos(2 * a) + 1) / 2)
    s = class_separability(emb, labels)
    assert s["S_k"] == pytest.approx(1.0) and s["S_k_nearest"] == pytest.approx(1.0)


def test_certainty_ratio_matches_cr_fiqa_formula():
    emb = np.array([[1.0, 0.0], [0.6, 0.8]])
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    cr = certainty_ratio(emb, np.array([0, 0]), centres)
    assert cr[0] == pytest.approx(1.0 / (0.0 + 1 + 1e-9))
    assert cr[1] == pytest.approx(0.6 / (0.8 + 1 + 1e-9))
    assert intra_class_diversity(emb, np.array([0, 0]), centres) == pytest.approx(np.var(cr))


def test_identical_images_have_no_diversity_and_full_consistency():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 16))
    emb = np.repeat(base, 4, axis=0)
    labels = np.repeat(np.arange(5), 4)
    attrs = dataset_attributes(emb, labels)
    assert attrs["C_k"] == pytest.approx(1.0)
    assert attrs["D_k"] == pytest.approx(0.0, abs=1e-12)


def test_nearest_similarity_is_exact_in_chunks():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(50, 8)), rng.normal(size=(1000, 8))
    best, arg = nearest_similarity(q, g, chunk=97)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    full = qn @ gn.T
    np.testing.assert_allclose(best, full.max(1), rtol=1e-5)
    np.testing.assert_array_equal(arg, full.argmax(1))


def test_nearest_similarity_reads_a_memory_mapped_gallery(tmp_path):
    g = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    best, arg = nearest_similarity(g[:3], mm, chunk=64)
    np.testing.assert_array_equal(arg, [0, 1, 2])
    np.testing.assert_allclose(best, 1.0, rtol=1e-6)


def test_summary():
    s = summary(np.arange(101))
    assert s["p50"] == 50 and s["max"] == 100 and s["n"] == 101
