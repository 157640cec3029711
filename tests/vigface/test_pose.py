import numpy as np
import pytest

from vigface.pose import YAW_BINS, PoseBank, PoseSpecError, estimate_pose, total_variation

# insightface's 112x112 ArcFace template: the frontal reference
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


def _turned(yaw_deg):
    """Template with the nose shifted as a head turned by yaw would shift it."""
    lm = TEMPLATE.copy()
    eye_dist = lm[1, 0] - lm[0, 0]
    lm[2, 0] = (lm[0, 0] + lm[1, 0]) / 2 + 0.55 * eye_dist * np.tan(np.radians(yaw_deg))
    return lm


def _rotated(lm, deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    centre = lm.mean(0)
    return (lm - centre) @ np.array([[c, s], [-s, c]]) + centre


def test_pose_estimates_on_the_template():
    yaw, pitch, roll = estimate_pose(TEMPLATE[None])[0]
    assert abs(yaw) < 1 and abs(pitch) < 2 and abs(roll) < 1
    assert estimate_pose(_turned(30)[None])[0, 0] == pytest.approx(30, abs=0.5)
    assert estimate_pose(_turned(-50)[None])[0, 0] == pytest.approx(-50, abs=0.5)
    # roll is measured and undone before yaw
    y, _, r = estimate_pose(_rotated(_turned(20), 10)[None])[0]
    assert r == pytest.approx(10, abs=0.5) and y == pytest.approx(20, abs=0.5)


def _bank():
    yaws = np.concatenate([np.zeros(70), np.full(20, 25), np.full(10, -45)])
    return PoseBank.from_landmarks(np.stack([_turned(y) for y in yaws]))


def test_draws_match_requested_histogram():
    bank = _bank()
    for spec in (
        "match_training",
        "frontal",
        "uniform_yaw",
        {"frontal": 0.5, "right_15_35": 0.3, "left_35_60": 0.2},
    ):
        idx, w = bank.draw(spec, 1000, seed=3)
        drawn = np.bincount(bank.bins[idx], minlength=len(YAW_BINS)) / 1000
        assert total_variation(drawn, w) <= 0.001
    idx_a, _ = bank.draw("uniform_yaw", 50, seed=1)
    idx_b, _ = bank.draw("uniform_yaw", 50, seed=1)
    assert np.array_equal(idx_a, idx_b)


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("sideways", "unknown preset"),
        ({"frontal": 0.5, "right_15_35": 0.4}, "sum to 1"),
        ({"frontal": 1.2, "right_15_35": -0.2}, ">= 0"),
        ({"upside_down": 1.0}, "unknown bins"),
        ({"right_60+": 1.0}, "no faces"),
        ({}, "non-empty"),
    ],
)
def test_bad_pose_specs_are_named(spec, msg):
    with pytest.raises(PoseSpecError, match=msg):
        _bank().weights(spec)


def test_pose_balance_draws_rare_yaw_bins_more_often_and_reproducibly():
    """The stage-2 trainer's pose_balance: weights (bin count)^-alpha over |yaw| bins, so at
    alpha = 1 each |yaw| bin is drawn equally often, at 0 as the data is; left and right
    profiles share a bin (flips mirror them)."""
    from vigface.training.dit_data import epoch_order, pose_balance_weights

    lms = np.stack([_turned(0)] * 80 + [_turned(25)] * 10 + [_turned(-25)] * 6 + [_turned(45)] * 4)
    kind = np.array([0] * 80 + [1] * 16 + [2] * 4)  # frontal, |15-35|, |35-60|
    for alpha, expected in [(1.0, [1 / 3] * 3), (0.0, [0.8, 0.16, 0.04])]:
        w = pose_balance_weights(lms, alpha).numpy()
        assert w.sum() == pytest.approx(1.0)
        share = np.bincount(kind, weights=w, minlength=3)
        np.testing.assert_allclose(share, expected, atol=1e-9)
    w = pose_balance_weights(lms, 1.0)
    order = epoch_order(len(lms), seed=7, weights=w)
    assert len(order) == len(lms) and np.array_equal(order, epoch_order(len(lms), 7, w))
    drawn = np.bincount(kind[epoch_order(30000, 1, w.repeat(300) / 300) % len(lms)], minlength=3)
    np.testing.assert_allclose(drawn / drawn.sum(), [1 / 3] * 3, atol=0.02)
    perm = epoch_order(len(lms), seed=7)  # no weights: a permutation, every image once
    assert sorted(perm.tolist()) == list(range(len(lms)))


def test_pose_balance_is_validated():
    from pydantic import ValidationError

    from vigface.config import TrainDiTConfig

    assert TrainDiTConfig(pose_balance=0.75).pose_balance == 0.75
    with pytest.raises(ValidationError, match="pose_balance"):
        TrainDiTConfig(pose_balance=1.5)


def test_calibration_takes_each_yaw_groups_poses_from_one_bank():
    from vigface.dataset.calibrate import group_poses

    yaws = np.concatenate([np.zeros(5), np.linspace(36, 58, 6), -np.linspace(37, 55, 4)])
    bank = PoseBank.from_landmarks(np.stack([_turned(y) for y in yaws]))
    turned = group_poses(bank, "35_60", 4)
    got = np.abs(estimate_pose(turned)[:, 0])
    assert turned.shape == (4, 5, 2) and ((got >= 35) & (got < 60)).all()
    assert got.min() < 38 and got.max() > 55  # spread over the group's range, not one pose
    assert np.abs(estimate_pose(group_poses(bank, "frontal", 2))[:, 0]).max() < 1
    assert group_poses(bank, "15_35", 3) is None  # the bank has no face in that group
