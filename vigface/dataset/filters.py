"""The privacy and consistency filters: what decides that a generated face may be sold.

Inputs are L2-normalised FR embeddings, so every test below is a cosine:

* **consistency** (per image): ``cos(f(x), w_own) >= tau_consistency``: the face shows the
  identity it was drawn for;
* **leakage** (per image): ``max_r cos(f(x), w_r) <= tau_leak`` over the real prototypes
  ``W_R``; when configured also over an external gallery of real embeddings (read in chunks,
  any size) and, for a second opinion that does not share the FR model's blind spots, over an
  independent judge model's gallery with the judge's own threshold;
* **identity leakage**: the same test on the normalised mean embedding of an identity's
  accepted images (a class can look like a real person on average while no single image does);
* **face** (per image, with the face gate on): a standard face detector that took no part in
  training finds a well-placed face (:class:`vigface.evaluation.image_quality.FaceDetector`):
  the FR tests ask only whether the FR model finds the prototype in the pixels, which a
  mosaic can satisfy.

In real-identity augmentation (``augmentation=True``) the identity *is* a real person: its own
row of ``W_R`` is not a leak, and the leakage tests are off by construction; the nearest-real
statistics then report the nearest *other* real identity.

Thresholds are compared strictly as written above: a cosine equal to ``tau_leak`` passes, and
one equal to ``tau_consistency`` passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vigface.evaluation.metrics import nearest_similarity


def unit_rows(x) -> np.ndarray:
    """Rows scaled to unit length, float32 (torch's ``F.normalize``, as the FR model's own
    embeddings are, so that cosines are bit-identical wherever they are computed)."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.as_tensor(np.asarray(x, np.float32)), dim=1).numpy()


class Judge(Protocol):
    """An independent FR model with its own gallery of real embeddings."""

    threshold: float

    def embed(self, images: np.ndarray) -> np.ndarray: ...

    def nearest(self, embeddings: np.ndarray) -> np.ndarray: ...


@dataclass
class Verdicts:
    """Per-image decisions for one batch (arrays of length N)."""

    cos_own: np.ndarray  # cosine to the prototype the image was drawn for
    nearest_real: np.ndarray  # largest cosine to a real prototype (another one when augmenting)
    nearest_real_id: np.ndarray  # its row of W_R
    consistent: np.ndarray  # cos_own >= tau_consistency
    leak_prototypes: np.ndarray  # nearest_real > tau_leak
    leak_gallery: np.ndarray  # external gallery's best cosine > tau_leak
    leak_judge: np.ndarray  # judge's best cosine > its threshold
    face: np.ndarray  # a well-placed face was found (all True with the face gate off)

    @property
    def no_leak(self) -> np.ndarray:
        return ~(self.leak_prototypes | self.leak_gallery | self.leak_judge)

    @property
    def passed(self) -> np.ndarray:
        return self.consistent & self.no_leak & self.face

    def counts(self) -> dict[str, int]:
        """How many images each test rejected (an image can fail several)."""
        return {
            "rejected_consistency": int((~self.consistent).sum()),
            "rejected_leakage": int((~self.no_leak).sum()),
            "rejected_leakage_prototypes": int(self.leak_prototypes.sum()),
            "rejected_leakage_gallery": int(self.leak_gallery.sum()),
            "rejected_leakage_judge": int(self.leak_judge.sum()),
            "rejected_face": int((~self.face).sum()),
        }


class DatasetFilter:
    """Applies the thresholds; holds no model, so every path is testable on hand-built vectors.

    ``real_prototypes`` are the rows of ``W_R`` (normalised here). ``gallery`` is an (M, D)
    array or memory map of real embeddings by the same FR model; ``judge`` an independent model
    (:class:`LeakageJudge` or anything with ``embed``/``nearest``/``threshold``).
    """

    def __init__(
        self,
        real_prototypes: np.ndarray,
        tau_consistency: float,
        tau_leak: float,
        gallery: np.ndarray | None = None,
        judge: Judge | None = None,
        augmentation: bool = False,
        tau_consistency_by_pose: dict[str, float] | None = None,
        face_gate: bool = False,
    ):
        self.face_gate = face_gate
        self.real = unit_rows(real_prototypes)
        self.tau_consistency, self.tau_leak = float(tau_consistency), float(tau_leak)
        self.tau_by_pose = dict(tau_consistency_by_pose or {})
        self.gallery, self.judge, self.augmentation = gallery, judge, augmentation

    def image_verdicts(
        self,
        emb: np.ndarray,
        own: np.ndarray,
        own_rows: np.ndarray,
        judge_emb: np.ndarray | None = None,
        pose_bins: list[str] | None = None,
        face: np.ndarray | None = None,
    ) -> Verdicts:
        """Verdicts for embeddings ``emb`` (N, D) drawn for prototypes ``own`` (N, D), which are
        rows ``own_rows`` of W_V (virtual) or W_R (augmentation). ``judge_emb`` are the judge's
        embeddings of the same images (required when a judge is configured). ``pose_bins``
        names each image's yaw bin: with per-pose thresholds, each image meets its bin's.
        ``face`` says for each image whether the detector found a well-placed face (None:
        the face gate is off)."""
        emb = np.asarray(emb, np.float32)
        own = unit_rows(own)
        n = len(emb)
        cos_own = (emb * own).sum(1)
        sims = emb @ self.real.T
        if self.augmentation:  # a real class's own row is not a leak
            sims[np.arange(n), np.asarray(own_rows)] = -2
        near_id, near = sims.argmax(1), sims.max(1)
        off = np.zeros(n, bool)
        leak_p, leak_g, leak_j = near > self.tau_leak, off.copy(), off.copy()
        if self.gallery is not None:
            leak_g = nearest_similarity(emb, self.gallery)[0] > self.tau_leak
        if self.judge is not None:
            if judge_emb is None:
                raise ValueError("a judge is configured: pass the judge's embeddings")
            leak_j = self.judge.nearest(judge_emb) > self.judge.threshold
        if self.augmentation:
            leak_p, leak_g, leak_j = off, off.copy(), off.copy()
        return Verdicts(
            cos_own=cos_own,
            nearest_real=near,
            nearest_real_id=near_id,
            consistent=cos_own >= self.consistency_thresholds(pose_bins, n),
            leak_prototypes=leak_p,
            leak_gallery=leak_g,
            leak_judge=leak_j,
            face=np.ones(n, bool) if face is None else np.asarray(face, bool),
        )

    def consistency_thresholds(self, pose_bins: list[str] | None, n: int) -> np.ndarray:
        """Each image's tau_consistency: its pose bin's where per-pose thresholds are set."""
        if not self.tau_by_pose or pose_bins is None:
            return np.full(n, self.tau_consistency, np.float32)
        if len(pose_bins) != n:
            raise ValueError(f"{len(pose_bins)} pose bins for {n} images")
        return np.array([self.tau_by_pose[b] for b in pose_bins], np.float32)

    def identity_leaks(self, embs: np.ndarray) -> bool:
        """Does the normalised mean of one identity's embeddings come closer than ``tau_leak``
        to a real prototype? Never, when augmenting a real class."""
        if self.augmentation:
            return False
        mean = np.mean(np.asarray(embs, np.float32), axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        return float((self.real @ mean).max()) > self.tau_leak

    def describe(self) -> str:
        """One line naming every active test and its threshold (for error messages)."""
        parts = [f"consistency (cos_own >= {self.tau_consistency:g})"]
        if self.tau_by_pose:
            per = ", ".join(f"{b} {t:g}" for b, t in self.tau_by_pose.items())
            parts[0] = f"consistency (cos_own >= the pose bin's threshold: {per})"
        if self.augmentation:
            parts.append("no leakage tests (real-identity augmentation)")
        else:
            parts.append(f"leakage (nearest real prototype <= {self.tau_leak:g})")
            if self.gallery is not None:
                parts.append(f"gallery of {len(self.gallery)} real embeddings <= {self.tau_leak:g}")
            if self.judge is not None:
                parts.append(f"judge <= {self.judge.threshold:g}")
        if self.face_gate:
            parts.append("face (a detector finds a well-placed face)")
        return ", ".join(parts)


class LeakageJudge:
    """An independent FR model (insightface ONNX, loaded by ``insightface.model_zoo``) with its
    own gallery of real embeddings (``.npy``, normalised rows) and threshold."""

    def __init__(self, onnx_path: str | Path, gallery_npy: str | Path, threshold: float):
        import insightface

        for what, p in (("leakage_judge_onnx", onnx_path), ("leakage_judge_gallery", gallery_npy)):
            if not Path(p).is_file():
                raise ValueError(f"{what}: {p} is not a file")
        self.model = insightface.model_zoo.get_model(
            str(onnx_path), providers=["CPUExecutionProvider"]
        )
        if self.model is None or type(self.model).__name__ != "ArcFaceONNX":
            raise ValueError(f"leakage_judge_onnx: {onnx_path} is not a recognition model")
        self.gallery = np.load(gallery_npy, mmap_mode="r")
        self.threshold = float(threshold)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Normalised embeddings of uint8 RGB faces of any square size."""
        from PIL import Image

        from vigface.constants import CROP_SIZE

        crops = [  # insightface takes OpenCV BGR crops of the standard size
            np.asarray(Image.fromarray(im).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC))[
                :, :, ::-1
            ]
            for im in images
        ]
        emb = np.asarray(self.model.get_feat(crops), np.float32)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def nearest(self, embeddings: np.ndarray) -> np.ndarray:
        return nearest_similarity(embeddings, self.gallery)[0]
