"""The independent judge: distance figures on hand-built descriptors, the verdict on both
sides, and dlib's descriptor on real pixels."""

import numpy as np
import pytest

from vigface.evaluation.judge import DlibJudge, degrade, identity_distances, verdict


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_distance_figures_on_hand_built_descriptors():
    e = np.eye(4, dtype=np.float32)
    # identity 0: two images at 90 degrees around e0+e1; identity 1: two copies of e2
    emb = np.stack([e[0], e[1], e[2], e[2]])
    labels = np.array([0, 0, 1, 1])
    real = np.stack([e[3], _unit(e[2] + e[3])])
    d = identity_distances(emb, labels, real)
    assert d["within"] == pytest.approx((np.sqrt(2) + 0) / 2)  # mean over identities
    c0 = _unit(e[0] + e[1])
    between = np.linalg.norm(c0 - e[2])  # each centre's nearest other centre is the other one
    assert d["between"] == pytest.approx(between, abs=1e-6)
    to_real = (min(np.linalg.norm(c0 - r) for r in real) + np.linalg.norm(e[2] - real[1])) / 2
    assert d["centre_to_real"] == pytest.approx(to_real, abs=1e-6)
    # a real person is not compared with their own images
    own = identity_distances(emb, labels, real, np.array(["x", "b"]), exclude_same_name=["a", "b"])
    assert own["centre_to_real"] == pytest.approx(
        (min(np.linalg.norm(c0 - r) for r in real) + np.linalg.norm(e[2] - real[0])) / 2, abs=1e-6
    )


@pytest.mark.parametrize("delta,ok", [(-1e-3, False), (1e-3, True)])
def test_verdict_on_both_sides_of_real_people(delta, ok):
    real = {"within": 0.4, "between": 0.6, "centre_to_real": 0.5, "resolution": 32}
    syn = {"within": 0.4 - delta, "between": 0.6 + delta, "centre_to_real": 0.5 + delta}
    v = verdict(syn, real)
    assert v["as_distinct_as_real"] is ok and v["as_far_as_real"] is ok
    assert ("as distinct as real people" in v["text"]) is ok
    assert "at 32 px" in v["text"]


def test_dlib_descriptor_is_unit_length_and_tells_two_faces_apart(face_folder):
    from vigface.data import AlignedFaceFolder

    ds = AlignedFaceFolder.scan(face_folder)
    images, labels = ds.load_array(112)
    judge = DlibJudge()
    emb = judge.embed(images[:4])
    assert emb.shape == (4, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(judge.embed(images[:1]), emb[:1], atol=1e-6)  # deterministic
    small = degrade(images[:2], 32)
    assert small.shape == (2, 112, 112, 3) and not np.array_equal(small, images[:2])
