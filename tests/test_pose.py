import numpy as np
import pytest

from vigface.dataset.pose import YAW_BINS, PoseBank, PoseSpecError, estimate_pose, total_variation

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
