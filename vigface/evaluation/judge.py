"""What an outsider sees: identity distances by an FR model that took no part in training.

The generator's identity loss, the filters and C_k/S_k all use our stage-1 FR model, so they
reward what that one model responds to. The judge here is dlib's ResNet face descriptor
(128-D, trained by Davis King on about 3 million faces; 98.9 % on LFW-112 dev pairs with the
fixed box below): it installs from PyPI (``dlib-bin`` and ``face-recognition-models``, which
ships the weights) and is never used by training or by the filters.

The figures it reports and how they are matched to real people:
:mod:`vigface.evaluation.judge_figures`.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vigface.constants import CROP_SIZE
from vigface.evaluation.judge_figures import JUDGE_NAME, compare, verdict

# dlib's 5-point shape predictor needs a detector-like box; on the insightface 112-px crop this
# fixed one covers brows to chin (LFW-112 dev pairs: 98.93 % with it, 98.77 % with dlib's
# detector boxes as the data README reports)
FACE_BOX = (18, 28, 94, 108)


def _model_files() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the independent judge needs the packages dlib-bin and face-recognition-models "
            "(pip install -e . installs them)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class OutsideJudge:
    """dlib's face descriptor on aligned crops of any square size (resized to 112 first)."""

    name = JUDGE_NAME

    def __init__(self):
        import dlib

        files = _model_files()
        self._dlib = dlib
        self.shape = dlib.shape_predictor(str(files / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(
            str(files / "dlib_face_recognition_resnet_model_v1.dat")
        )
        self.box = dlib.rectangle(*FACE_BOX)

    def embed(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, 128) unit descriptors."""
        out = []
        for start in range(0, len(images), batch):
            chips = []
            for im in images[start : start + batch]:
                if im.shape[0] != CROP_SIZE:
                    im = np.asarray(
                        Image.fromarray(im).resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)
                    )
                im = np.ascontiguousarray(im)
                chips.append(self._dlib.get_face_chip(im, self.shape(im, self.box)))
            out.append(np.asarray(self.net.compute_face_descriptor(chips), np.float32))
        emb = np.concatenate(out) if out else np.zeros((0, 128), np.float32)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def degrade(images: np.ndarray, resolution: int) -> np.ndarray:
    """Real crops as the generator delivers its own: box-downsampled to ``resolution`` (as its
    training data) and bicubic-upsampled back to 112 (as the dataset writer does)."""
    out = []
    for im in images:
        small = Image.fromarray(im).resize((resolution, resolution), Image.BOX)
        out.append(np.asarray(small.resize((CROP_SIZE, CROP_SIZE), Image.BICUBIC)))
    return np.stack(out)


def calibration_at(card: dict, resolution: int | None) -> dict | None:
    """Real people's figures at ``resolution`` from a generator card: ``judge.real`` (at
    ``judge.resolution``) or ``judge.real_at[str(resolution)]`` (e.g. the upsampler's 64 px);
    None when the card has none at that resolution (a comparison at another would be unfair)."""
    judge = card.get("judge") or {}
    real = judge.get("real")
    if resolution is None or (real and real.get("resolution") == resolution):
        return real
    return (judge.get("real_at") or {}).get(str(resolution))


@lru_cache(maxsize=1)
def shared_judge() -> OutsideJudge:
    """One judge per process (its models load once)."""
    return OutsideJudge()


def judgement(
    images: np.ndarray,
    labels: np.ndarray,
    real: dict,
    gallery: str | Path | None = None,
    seed: int = 0,
) -> dict:
    """The judge's figures for delivered images (uint8, 112 px) beside ``real`` (the model
    card's calibration); ``gallery`` is an ``.npz`` of real descriptors (``emb``, as
    :func:`cached_gallery` writes) for nearness to real people.

    A set with more identities than the calibration is judged on a seeded random subset of
    as many (``between`` falls as identities are added, so only equal counts compare; it also
    bounds the judge's cost in a large job's report: about 11 images/s on one CPU core)."""
    judge = shared_judge()
    real_emb = None
    if gallery:
        real_emb = np.load(gallery)["emb"].astype(np.float32)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_ref = real.get("identities")
    subsampled = bool(n_ref and len(classes) > n_ref)
    if subsampled:
        keep = np.random.default_rng(seed).choice(classes, n_ref, replace=False)
        mask = np.isin(labels, keep)
        images, labels = images[mask], labels[mask]
    emb = judge.embed(images)
    ours, real = compare(emb, labels, real, real_emb)
    if subsampled:
        ours["sampled_from_identities"] = int(len(classes))
    out = {"judge": judge.name, "synthetic": ours, "real": real, **verdict(ours, real)}
    if n_ref and not n_ref / 2 <= ours["identities"] <= n_ref * 2:
        # the nearest other centre is nearer the more identities there are
        out["text"] += (
            f" The real reference has {n_ref} people and this set {ours['identities']}"
            " identities: the between-centre figures compare fairly only at similar counts."
        )
    return out


def embed_folder(judge: OutsideJudge, root: str | Path, resolution: int | None = None):
    """Descriptors of every image of an ImageFolder (optionally degraded), and class names."""
    from vigface.data import AlignedFaceFolder

    ds = AlignedFaceFolder.scan(root)
    images, labels = ds.load_array(CROP_SIZE)
    if resolution is not None and resolution < CROP_SIZE:
        images = degrade(images, resolution)
    return judge.embed(images), np.asarray(ds.classes)[labels], images


def cached_gallery(judge: OutsideJudge, root: str | Path, resolution: int, cache: str | Path):
    """Descriptors of a real ImageFolder at ``resolution``, computed once per folder (the
    training set takes minutes) and kept as ``.npz`` under ``cache`` (descriptors and names
    only, no pixels)."""
    import hashlib

    root = Path(root).resolve()
    key = hashlib.sha256(f"{JUDGE_NAME}|{root}|{resolution}".encode()).hexdigest()[:16]
    path = Path(cache) / f"judge_gallery_{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["emb"], z["names"]
    emb, names, _ = embed_folder(judge, root, resolution)
    from vigface.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, emb=emb.astype(np.float16), names=names)
    return emb.astype(np.float16).astype(np.float32), names
