"""Pose bank and pose distributions built from 5-point landmarks.

Head pose from five points (eyes, nose tip, mouth corners in the 112-px crop) is an estimate,
not a measurement, but it is monotone in the true angles and good enough to balance a dataset:

* roll  = angle of the eye line;
* yaw   = atan(r / DEPTH), r = horizontal nose offset from the eye midpoint in eye distances
  (after undoing roll), DEPTH = 0.55 the nose-tip depth in front of the eye plane in eye
  distances for an average adult face: a head turned by theta moves the nose by
  DEPTH * sin(theta) while the eye distance shrinks by cos(theta);
* pitch = atan((q - Q0) / PITCH_GAIN), q = nose height between the eye line (0) and the mouth
  line (1), Q0 = 0.49 its value on the frontal insightface template, PITCH_GAIN = 0.6.

Yaw bins are symmetric: frontal |yaw| < 15 degrees, then +-15-35, +-35-60 and beyond 60
(negative = the subject's head turned to image left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEPTH = 0.55
Q0 = 0.49
PITCH_GAIN = 0.6

YAW_EDGES = [-np.inf, -60.0, -35.0, -15.0, 15.0, 35.0, 60.0, np.inf]
YAW_BINS = [
    "left_60+",
    "left_35_60",
    "left_15_35",
    "frontal",
    "right_15_35",
    "right_35_60",
    "right_60+",
]
PRESETS = ("match_training", "frontal", "uniform_yaw")
# |yaw| groups: a bin and its mirror image share one (the filters are calibrated per group)
YAW_GROUPS = ["frontal", "15_35", "35_60", "60+"]
# the groups an order's ``turned_pose_guidance`` applies to: |yaw| of 35 degrees and more
TURNED_GROUPS = ("35_60", "60+")


def yaw_group(bin_name: str) -> str:
    """The |yaw| group of a bin of :data:`YAW_BINS`: ``left_35_60`` -> ``35_60``."""
    return bin_name.removeprefix("left_").removeprefix("right_")


class PoseSpecError(ValueError):
    """A pose distribution is malformed; the message names the field."""


def estimate_pose(landmarks: np.ndarray) -> np.ndarray:
    """(N, 5, 2) landmarks -> (N, 3) degrees: yaw, pitch, roll."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    le, re, nose, lm_, rm = (lm[:, i] for i in range(5))
    eye_vec = re - le
    roll = np.arctan2(eye_vec[:, 1], eye_vec[:, 0])
    c, s = np.cos(-roll), np.sin(-roll)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (N, 2, 2)

    def unroll(p):
        return np.einsum("nij,nj->ni", rot, p - le)

    re_u, nose_u, mouth_u = unroll(re), unroll(nose), (unroll(lm_) + unroll(rm)) / 2
    eye_dist = np.maximum(re_u[:, 0], 1e-6)
    r = (nose_u[:, 0] - re_u[:, 0] / 2) / eye_dist
    yaw = np.degrees(np.arctan(r / DEPTH))
    q = nose_u[:, 1] / np.maximum(mouth_u[:, 1], 1e-6)
    pitch = np.degrees(np.arctan((q - Q0) / PITCH_GAIN))
    return np.stack([yaw, pitch, np.degrees(roll)], 1)


def yaw_bin(yaw_deg: np.ndarray) -> np.ndarray:
    """Index into :data:`YAW_BINS` for each yaw."""
    return np.digitize(np.asarray(yaw_deg), YAW_EDGES[1:-1])


def is_turned(landmarks: np.ndarray) -> np.ndarray:
    """(N,) bool: do these (N, 5, 2) landmark sets ask for a face turned into one of
    :data:`TURNED_GROUPS`? The same estimate the pose bank bins its rows by."""
    bins = yaw_bin(estimate_pose(landmarks)[:, 0])
    return np.array([yaw_group(YAW_BINS[b]) in TURNED_GROUPS for b in bins], bool)


@dataclass
class PoseBank:
    """All training landmarks with their pose estimate and yaw bin."""

    landmarks: np.ndarray  # (N, 5, 2)
    angles: np.ndarray  # (N, 3)
    bins: np.ndarray  # (N,)

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> PoseBank:
        lm = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        angles = estimate_pose(lm)
        return cls(lm, angles, yaw_bin(angles[:, 0]))

    def histogram(self) -> np.ndarray:
        h = np.bincount(self.bins, minlength=len(YAW_BINS)).astype(np.float64)
        return h / h.sum()

    def weights(self, spec: str | dict) -> np.ndarray:
        """Requested bin weights for a preset name or an explicit ``{bin: weight}`` mapping."""
        if isinstance(spec, str):
            if spec == "match_training":
                return self.histogram()
            if spec == "frontal":
                return np.eye(len(YAW_BINS))[YAW_BINS.index("frontal")]
            if spec == "uniform_yaw":
                available = np.bincount(self.bins, minlength=len(YAW_BINS)) > 0
                return available / available.sum()
            raise PoseSpecError(f"pose: unknown preset {spec!r}; choose one of {list(PRESETS)}")
        if not isinstance(spec, dict) or not spec:
            raise PoseSpecError("pose: give a preset name or a non-empty {bin: weight} mapping")
        unknown = sorted(set(spec) - set(YAW_BINS))
        if unknown:
            raise PoseSpecError(f"pose: unknown bins {unknown}; bins are {YAW_BINS}")
        w = np.array([float(spec.get(b, 0.0)) for b in YAW_BINS])
        if (w < 0).any():
            raise PoseSpecError("pose: bin weights must be >= 0")
        if abs(w.sum() - 1.0) > 1e-6:
            raise PoseSpecError(f"pose: bin weights must sum to 1 (they sum to {w.sum():.6g})")
        counts = np.bincount(self.bins, minlength=len(YAW_BINS))
        empty = [YAW_BINS[i] for i in np.flatnonzero((w > 0) & (counts == 0))]
        if empty:
            raise PoseSpecError(f"pose: the model's pose bank has no faces in bins {empty}")
        return w

    def draw(self, spec: str | dict, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` landmark sets whose bin histogram matches ``spec`` as closely as integers
        allow (largest-remainder allocation, then a seeded draw inside each bin, in a seeded
        order). Returns ``(indices into the bank, requested weights)``."""
        w = self.weights(spec)
        exact = w * count
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts))[: count - counts.sum()]:
            counts[i] += 1
        rng = np.random.default_rng(seed)
        picks = [
            rng.choice(np.flatnonzero(self.bins == b), size=n, replace=True)
            for b, n in enumerate(counts)
            if n > 0
        ]
        idx = np.concatenate(picks) if picks else np.empty(0, int)
        return idx[rng.permutation(len(idx))], w


def group_shares(bin_weights: np.ndarray) -> dict[str, float]:
    """Weights over :data:`YAW_BINS` (as :meth:`PoseBank.weights` gives them) summed per |yaw|
    group, groups without weight left out."""
    shares: dict[str, float] = {}
    for name, w in zip(YAW_BINS, np.asarray(bin_weights, float), strict=True):
        if w > 0:
            shares[yaw_group(name)] = shares.get(yaw_group(name), 0.0) + float(w)
    total = sum(shares.values())
    return {g: v / total for g, v in shares.items()} if total > 0 else {}


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())
