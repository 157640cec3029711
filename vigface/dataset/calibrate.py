"""Filter defaults derived per model, stored in its card under ``filters``.

* ``real_nearest_negative``: for every real training image, its maximum cosine to the
  prototype of any *other* real identity. It is how close real people come to each other in
  this FR model's space; the paper's privacy criterion is that generated identities stay
  below it.
* ``tau_leak`` = the 99th percentile of that distribution: a generated image (or identity
  mean) closer to some real prototype than 99 % of real faces come to their most similar
  other identity is treated as that person.
* ``tau_consistency`` = the 5th percentile of cos(f(image), own prototype) over images drawn
  for ``calib_identities`` virtual prototypes with the sampler settings orders get by default
  (the card's ``sampler_defaults``): the 5 % that drift most from their prototype are redrawn.
  The threshold belongs to the weights and the settings it was drawn with, so recalibrate
  after either changes. Calibration images are discarded; the prototypes used stay free.
* ``tau_consistency_by_guidance``: the same percentile drawn at each of several guidance
  weights. How close a face lands to its prototype depends on the guidance, so one threshold
  drawn at the default guidance turned most draws at another guidance into redraws (an order
  at g 4 ran out of spares). Orders take the threshold of their own guidance, interpolated
  between calibrated weights; a guidance outside them is refused at admission.
* ``tau_consistency_by_pose``: the same percentile drawn at poses of each |yaw| group
  (frontal, 15-35, 35-60 degrees, either side) of the entry's pose bank, at each pose guidance
  asked for. A turned face can land further from its prototype than a frontal one of the same
  identity, so each draw is held to its own group's threshold
  (:func:`vigface.dataset.spec.pose_thresholds`): an order takes the groups' table of its own
  pose guidance (linear between calibrated weights, the nearest outside them), moved with its
  guidance by the guidance table. On the 112-px entry (11,057 steps) the groups differ by up
  to 0.016 and pose guidance 3 raises them by 0.010-0.020.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F

from vigface.data import AlignedFaceFolder
from vigface.evaluation.identity import identity_fidelity
from vigface.evaluation.metrics import summary
from vigface.generator.artifact import Generator
from vigface.generator.grid import pose_columns
from vigface.pose import YAW_BINS, YAW_GROUPS, PoseBank, yaw_bin, yaw_group
from vigface.sampler_settings import SamplerSettings


def real_nearest_negative(gen: Generator, data_dir: str | Path) -> np.ndarray:
    fr = gen.fr
    ds = AlignedFaceFolder.scan(data_dir)
    row_of = {name: i for i, name in enumerate(fr.classes)}
    images, labels = ds.load_array(fr.backbone.input_size)
    rows = np.array([row_of.get(ds.classes[y], -1) for y in labels])
    keep = rows >= 0
    emb = fr.embed(images[keep], flip=False).numpy()
    real = F.normalize(fr.real_prototypes.float().cpu(), dim=1).numpy()
    sims = emb @ real.T
    sims[np.arange(len(emb)), rows[keep]] = -2
    return sims.max(1)


def _draw(gen: Generator, cols, guidance: float, s: dict, identities: int, **kw) -> dict:
    """:func:`identity_fidelity` of ``identities`` virtual prototypes at ``cols`` poses, drawn
    with the sampler settings ``s`` (guidance given apart) and the calibration's fixed seed."""
    interval = s.get("guidance_interval")
    k = gen.fr.virtual_prototypes.shape[0]
    return identity_fidelity(
        gen, "virtual", min(identities, k), cols, float(guidance), int(s["steps"]),
        seed=987654, scheduler=s["scheduler"],
        guidance_interval=tuple(interval) if interval else None,
        timestep_spacing=s.get("timestep_spacing", SamplerSettings().timestep_spacing), **kw,
    )  # fmt: skip


def consistency_at(
    gen: Generator, guidance: float, s: dict, calib_identities: int = 50, poses: int = 4
) -> dict:
    """tau_consistency (the 5th percentile of cos(image, own prototype)) drawn at ``guidance``
    with the other sampler settings ``s``, and the median beside it."""
    fid = _draw(gen, pose_columns(gen.pose_landmarks, poses), guidance, s, calib_identities)
    cos_own = np.array(fid["cos_own_all"])
    return {
        "tau_consistency": round(float(np.percentile(cos_own, 5)), 4),
        "cos_own_p50": round(float(np.percentile(cos_own, 50)), 4),
        "images": int(fid["images"]),
    }


def consistency_by_guidance(
    gen: Generator, guidances: list[float], calib_identities: int = 50, sampler: dict | None = None
) -> dict[str, dict]:
    """:func:`consistency_at` for each guidance, keyed by the guidance written as ``%g``."""
    s = SamplerSettings.for_model(gen.card).model_dump() if sampler is None else sampler
    return {f"{g:g}": consistency_at(gen, g, s, calib_identities) for g in sorted(guidances)}


def group_poses(bank: PoseBank, group: str, count: int) -> np.ndarray | None:
    """``count`` landmark sets of the |yaw| ``group``, spread over its yaw range and taken
    from both sides in turn (None when the bank has no pose in the group)."""
    names = np.array([yaw_group(YAW_BINS[b]) for b in bank.bins])
    rows = np.flatnonzero(names == group)
    if len(rows) == 0:
        return None
    rows = rows[np.argsort(np.abs(bank.angles[rows, 0]), kind="stable")]
    picks = rows[np.linspace(0, len(rows) - 1, count).round().astype(int)]
    return bank.landmarks[picks]


def consistency_by_pose(
    gen: Generator,
    calib_identities: int = 50,
    poses: int = 4,
    sampler: dict | None = None,
    pose_guidances: list[float] | None = None,
) -> dict[str, dict[str, dict]]:
    """tau_consistency per |yaw| group of the entry's pose bank, each drawn at ``poses`` poses
    of that group for the same ``calib_identities`` prototypes, at the card's sampler
    defaults (or ``sampler``), once per pose guidance weight (default: the card's). Keyed by
    the pose guidance written as
    ``%g``, then by group; groups the bank lacks are left out."""
    if gen.pose_landmarks is None:
        raise ValueError("the generator entry has no pose landmarks (pose_landmarks.npy)")
    s = SamplerSettings.for_model(gen.card).model_dump() if sampler is None else sampler
    weights = sorted(set(pose_guidances or [float(s.get("pose_guidance", 1.0))]))
    bank = gen.pose_bank
    tables: dict[str, dict[str, dict]] = {}
    for gp in weights:
        table = tables.setdefault(f"{gp:g}", {})
        for group in YAW_GROUPS:
            cols = group_poses(bank, group, poses)
            if cols is None:
                continue
            fid = _draw(gen, cols, s["guidance"], s, calib_identities, pose_guidance=gp)
            cos_own = np.array(fid["cos_own_all"])
            table[group] = {
                "tau_consistency": round(float(np.percentile(cos_own, 5)), 4),
                "cos_own_p50": round(float(np.percentile(cos_own, 50)), 4),
                "images": int(fid["images"]),
                "guidance": float(s["guidance"]),
                "pose_guidance": gp,
                **shown_reach(fid["images_array"], group),
            }
    return tables


def calibrate(
    gen: Generator,
    data_dir: str | Path,
    calib_identities: int = 50,
    poses: int = 4,
    sampler: dict | None = None,
) -> dict:
    """``sampler``: guidance, steps, scheduler, guidance_interval (default: the card's)."""
    s = SamplerSettings.for_model(gen.card).model_dump() if sampler is None else sampler
    interval = s.get("guidance_interval")
    neg = real_nearest_negative(gen, data_dir)
    fid = _draw(gen, pose_columns(gen.pose_landmarks, poses), s["guidance"], s, calib_identities)
    face_rate = detector_rate(fid.pop("images_array"))
    cos_own = np.array(fid["cos_own_all"])
    return {
        "tau_leak": round(float(np.percentile(neg, 99)), 4),
        "tau_consistency": round(float(np.percentile(cos_own, 5)), 4),
        # a model that draws faces has the detector check every image; one that does not
        # (a test's tiny model) would have every draw rejected, so its card says so instead
        "face_gate": face_rate >= FACE_GATE_MIN_RATE,
        "face_rate": face_rate,
        "real_nearest_negative": summary(neg),
        "calibration_cos_own": summary(cos_own),
        "calibration": {
            "identities": fid["identities"],
            "images": fid["images"],
            "guidance": float(s["guidance"]),
            "steps": int(s["steps"]),
            "scheduler": s["scheduler"],
            "timestep_spacing": s.get("timestep_spacing", SamplerSettings().timestep_spacing),
            "guidance_interval": list(interval) if interval else None,
            "data": str(data_dir),
            # sampling speed of this machine: admission's time estimate before any job ran
            "img_per_s": round(fid["images"] / max(fid["sampling_seconds"], 1e-9), 3),
        },
    }


def shown_reach(images: np.ndarray, group: str) -> dict:
    """How far the drawn faces turn: the share whose pixels show the |yaw| group they were
    drawn for and their mean shown |yaw| (dlib's 68 points: no part of training). Admission
    warns an order that asks for a group the model does not reach."""
    try:
        from vigface.evaluation.shown_pose import ShownPose

        yaw = ShownPose().yaw(images)
    except Exception:  # noqa: BLE001 - the measurement is optional, the thresholds are not
        return {}
    shown = [yaw_group(YAW_BINS[b]) for b in yaw_bin(yaw)]
    return {
        "shown_in_group": round(float(np.mean([g == group for g in shown])), 4),
        "shown_mean_abs_yaw": round(float(np.mean(np.abs(yaw))), 2),
    }


FACE_GATE_MIN_RATE = 0.5


def detector_rate(images: np.ndarray) -> float:
    """Share of ``images`` in which the face detector finds a well-placed face."""
    from vigface.evaluation.image_quality import FaceDetector

    found = [d.well_placed for d in FaceDetector().detect_all(images)]
    return round(float(np.mean(found)), 4) if found else 0.0
