"""The privacy and consistency filters on hand-built embeddings, just below and just above
every threshold, for every path: prototypes, gallery in chunks, judge, identity mean,
real-identity augmentation. One test runs a real ONNX judge exported from a trained model."""

import numpy as np
import pytest

from vigface.dataset.filters import DatasetFilter, LeakageJudge
from vigface.evaluation.metrics import nearest_similarity

D = 8
EPS = 1e-3


def unit(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1
    return v


def at_cos(target: np.ndarray, other: np.ndarray, c: float) -> np.ndarray:
    """A unit vector with cosine ``c`` to ``target`` and the rest along ``other`` (both unit,
    orthogonal)."""
    return (c * target + np.sqrt(1 - c * c) * other).astype(np.float32)


REAL = np.stack([unit(0), unit(1), unit(2)])  # W_R: three real people
OWN = unit(7)  # the virtual prototype drawn for


def verdict(filt, emb, **kw):
    return filt.image_verdicts(emb[None], OWN[None], np.array([0]), **kw)


@pytest.mark.parametrize("delta,leaks", [(-EPS, False), (+EPS, True)])
def test_leakage_against_real_prototypes_on_both_sides(delta, leaks):
    tau = 0.5
    filt = DatasetFilter(REAL, tau_consistency=-1, tau_leak=tau)
    emb = at_cos(unit(1), OWN, tau + delta)  # cosine tau +- eps to real person 1
    v = verdict(filt, emb)
    assert bool(v.leak_prototypes[0]) is leaks and bool(v.passed[0]) is not leaks
    assert v.nearest_real_id[0] == 1 and v.nearest_real[0] == pytest.approx(tau + delta, abs=1e-5)
    assert v.counts()["rejected_leakage_prototypes"] == int(leaks)


@pytest.mark.parametrize("delta,ok", [(-EPS, False), (+EPS, True)])
def test_consistency_on_both_sides(delta, ok):
    tau = 0.3
    filt = DatasetFilter(REAL, tau_consistency=tau, tau_leak=0.9)
    emb = at_cos(OWN, unit(5), tau + delta)
    v = verdict(filt, emb)
    assert bool(v.consistent[0]) is ok and bool(v.passed[0]) is ok
    assert not v.leak_prototypes[0]
    assert v.cos_own[0] == pytest.approx(tau + delta, abs=1e-5)


@pytest.mark.parametrize("delta,leaks", [(-EPS, False), (+EPS, True)])
def test_gallery_read_in_chunks_on_both_sides(tmp_path, delta, leaks):
    """A person in the external gallery but not in W_R, found in the last of several chunks."""
    tau = 0.6
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(5000, D)).astype(np.float32)
    noise[:, 4] = 0  # nobody in the noise looks like the person below
    noise[:, 7] = 0
    gallery = np.concatenate([noise, unit(4)[None]])
    np.save(tmp_path / "g.npy", gallery)
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    emb = at_cos(unit(4), OWN, tau + delta)
    best, arg = nearest_similarity(emb[None], mm, chunk=1000)  # six chunks
    assert arg[0] == 5000 and best[0] == pytest.approx(tau + delta, abs=1e-5)
    filt = DatasetFilter(REAL, tau_consistency=-1, tau_leak=tau, gallery=mm)
    v = verdict(filt, emb)
    assert not v.leak_prototypes[0]  # W_R alone would have let it through
    assert bool(v.leak_gallery[0]) is leaks and bool(v.passed[0]) is not leaks


class GalleryJudge:
    """The judge protocol over given embeddings (the ONNX judge's model is tested below)."""

    def __init__(self, gallery, threshold):
        self.gallery, self.threshold = gallery, threshold

    def embed(self, images):
        raise AssertionError("the filter takes the judge's embeddings, never images")

    def nearest(self, embeddings):
        return nearest_similarity(embeddings, self.gallery)[0]


@pytest.mark.parametrize("delta,leaks", [(-EPS, False), (+EPS, True)])
def test_judge_threshold_on_both_sides(delta, leaks):
    thr = 0.45
    judge = GalleryJudge(np.stack([unit(3)]), thr)
    filt = DatasetFilter(REAL, tau_consistency=-1, tau_leak=0.9, judge=judge)
    fr_emb = OWN  # the FR model sees nothing wrong
    judge_emb = at_cos(unit(3), unit(6), thr + delta)
    v = verdict(filt, fr_emb, judge_emb=judge_emb[None])
    assert not v.leak_prototypes[0]
    assert bool(v.leak_judge[0]) is leaks and bool(v.passed[0]) is not leaks
    with pytest.raises(ValueError, match="judge's embeddings"):
        verdict(filt, fr_emb)


@pytest.mark.parametrize("delta,leaks", [(-EPS, False), (+EPS, True)])
def test_identity_mean_on_both_sides(delta, leaks):
    """Two images each far from person 0 (cosine 0.6 c) whose normalised mean is at cosine
    c = tau +- eps: x = 0.6 c e0 +- 0.8 e5 + 0.6 sqrt(1 - c^2) e6."""
    tau = 0.8
    c = tau + delta
    filt = DatasetFilter(REAL, tau_consistency=-1, tau_leak=tau)
    base = 0.6 * c * unit(0) + 0.6 * np.sqrt(1 - c * c) * unit(6)
    embs = np.stack([base + 0.8 * unit(5), base - 0.8 * unit(5)]).astype(np.float32)
    assert np.allclose(np.linalg.norm(embs, axis=1), 1, atol=1e-6)
    assert (embs @ REAL.T).max() < tau - 0.1  # no single image comes near
    v = filt.image_verdicts(embs, np.stack([OWN, OWN]), np.array([0, 0]))
    assert not v.leak_prototypes.any()
    assert filt.identity_leaks(embs) is leaks


def test_augmentation_mode_ignores_the_own_real_row_and_never_leaks():
    tau = 0.5
    filt = DatasetFilter(REAL, tau_consistency=0.9, tau_leak=tau, augmentation=True)
    emb = at_cos(unit(1), unit(2), 0.95)  # real person 1, drawn for W_R row 1
    v = filt.image_verdicts(emb[None], REAL[1][None], np.array([1]))
    assert v.consistent[0] and not v.leak_prototypes[0] and v.passed[0]
    assert v.nearest_real_id[0] == 2  # the nearest *other* real person is reported
    assert v.nearest_real[0] == pytest.approx(np.sqrt(1 - 0.95**2), abs=1e-5)
    assert not filt.identity_leaks(np.stack([emb, emb]))
    plain = DatasetFilter(REAL, tau_consistency=0.9, tau_leak=tau)
    assert plain.image_verdicts(emb[None], REAL[1][None], np.array([1])).leak_prototypes[0]


def test_onnx_judge_embeds_and_flags_on_both_sides(tiny_generator, tmp_path):
    """A real ONNX judge: the tiny generator's FR backbone exported for insightface."""
    from vigface.export.onnx import export_backbone
    from vigface.fr_model import FRModel

    onnx = export_backbone(FRModel.load(tiny_generator / "fr"), tmp_path / "judge.onnx")
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
    gallery_faces = rng.integers(0, 255, size=(4, 112, 112, 3), dtype=np.uint8)
    np.save(tmp_path / "g.npy", np.zeros((1, 4), np.float32))
    probe = LeakageJudge(onnx, tmp_path / "g.npy", 0.0)
    np.save(tmp_path / "g.npy", probe.embed(gallery_faces))
    emb = probe.embed(faces)
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    best = nearest_similarity(emb, np.load(tmp_path / "g.npy"))[0]
    for thr, leaks in ((best.max() - EPS, True), (best.max() + EPS, False)):
        judge = LeakageJudge(onnx, tmp_path / "g.npy", thr)
        filt = DatasetFilter(REAL[:, :1].repeat(emb.shape[1], 1), -1, 1.0, judge=judge)
        v = filt.image_verdicts(emb, emb, np.zeros(3, int), judge_emb=judge.embed(faces))
        assert bool(v.leak_judge.any()) is leaks
    with pytest.raises(ValueError, match="leakage_judge_onnx"):
        LeakageJudge(tmp_path / "missing.onnx", tmp_path / "g.npy", 0.5)


def test_a_deployment_judge_reaches_every_shard(tiny_generator, tmp_path, monkeypatch):
    """VIGFACE_JUDGE_* settings put the independent judge into the workers' filters."""
    from jobstore.models import Job, Shard
    from jobstore.settings import Settings
    from model_store.loader import load_generator
    from vigface.export.onnx import export_backbone
    from vigface.fr_model import FRModel
    from workers.builders import shard_builder
    from workers.shard_state import Claim

    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    onnx = export_backbone(FRModel.load(tiny_generator / "fr"), tmp_path / "judge.onnx")
    np.save(tmp_path / "g.npy", np.eye(4, 32, dtype=np.float32))
    settings = Settings(
        home=tmp_path,
        leakage_judge_onnx=str(onnx),
        leakage_judge_gallery=str(tmp_path / "g.npy"),
        leakage_judge_threshold=0.5,
    )
    job = Job(
        id="j",
        model=tiny_generator.name,
        spec={
            "identities": 2,
            "images_per_identity": 1,
            "seed": 0,
            "tau_consistency": -1,
            "tau_leak": 1,
        },
    )
    shard = Shard(index=0, slot_start=0, slot_end=2, prototypes=[0, 1, 2])
    builder = shard_builder(settings, Claim.of(job, shard))
    assert isinstance(builder.filter.judge, LeakageJudge) and builder.filter.judge.threshold == 0.5
    plain = shard_builder(Settings(home=tmp_path), Claim.of(job, shard))
    assert plain.filter.judge is None


def test_calibration_draws_with_the_cards_sampler_and_keeps_the_rest_of_the_card(
    tiny_generator, tmp_path
):
    """tau_consistency is a percentile of images drawn the way orders are drawn (the card's
    sampler_defaults), and calibrating rewrites only the card's ``filters``."""
    import json
    import shutil

    from typer.testing import CliRunner

    from app.cli import app as cli

    model = tmp_path / "gen"
    shutil.copytree(tiny_generator, model, ignore=shutil.ignore_patterns("checkpoints"))
    card_path = model / "model_card.json"
    card = json.loads(card_path.read_text())
    card["sampler_defaults"] = {
        "guidance": 1.5, "steps": 3, "scheduler": "ddim", "timestep_spacing": "leading"
    }  # fmt: skip
    card["judge"] = {"name": "kept"}
    card_path.write_text(json.dumps(card))
    data = tiny_generator.parent / "train"
    r = CliRunner().invoke(cli, ["calibrate", "--model", str(model), "--data", str(data),
                                 "--identities", "5"])  # fmt: skip
    assert r.exit_code == 0, r.output
    after = json.loads(card_path.read_text())
    f = after["filters"]
    assert f["calibration"]["guidance"] == 1.5 and f["calibration"]["steps"] == 3
    assert f["calibration"]["scheduler"] == "ddim" and f["calibration"]["images"] == 5 * 4
    assert f["calibration"]["timestep_spacing"] == "leading"
    assert f["tau_leak"] == round(f["real_nearest_negative"]["p99"], 4)
    cos_own = json.loads((model / "measurements" / "filters.calibration_cos_own.json").read_text())
    assert f["tau_consistency"] == round(cos_own["p05"], 4)  # its source: a measurement
    assert after["judge"]["name"] == "kept" and after["sampler_defaults"]["steps"] == 3
    assert list(f["tau_consistency_by_pose"]) == ["1"]  # the card's pose guidance
    by_pose = f["tau_consistency_by_pose"]["1"]
    assert by_pose and set(by_pose) <= {"frontal", "15_35", "35_60", "60+"}
    for group in by_pose.values():  # each group drawn like the pooled one, at its own poses
        assert group["images"] == 5 * 4 and group["guidance"] == 1.5
        assert group["pose_guidance"] == 1.0
        assert -1 <= group["tau_consistency"] <= group["cos_own_p50"] <= 1
    assert json.loads(r.output.strip().splitlines()[-1]) == {
        "tau_leak": f["tau_leak"], "tau_consistency": f["tau_consistency"],
        "tau_consistency_by_pose": {"1": {g: v["tau_consistency"] for g, v in by_pose.items()}},
    }  # fmt: skip
    for bad in ("nan", "99"):
        r = CliRunner().invoke(cli, ["calibrate", "--model", str(model), "--data", str(data),
                                     "--pose-guidance", bad])  # fmt: skip
        assert r.exit_code != 0 and "--pose-guidance" in r.output
        assert json.loads(card_path.read_text())["filters"] == f
    r = CliRunner().invoke(cli, ["calibrate", "--model", str(model), "--data",
                                 str(tmp_path / "missing")])  # fmt: skip
    assert r.exit_code != 0
    assert json.loads(card_path.read_text())["filters"] == f  # a failed run leaves the card
    r = CliRunner().invoke(cli, ["calibrate", "--model", str(model), "--data", str(data),
                                 "--identities", "5", "--no-pose-groups"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        "tau_consistency_by_pose" not in json.loads(card_path.read_text())["filters"]
        or not (json.loads(card_path.read_text())["filters"]["tau_consistency_by_pose"])
    )  # recalibrated without groups: the old groups belonged to the old draw


@pytest.mark.parametrize("delta,ok", [(-EPS, False), (+EPS, True)])
def test_each_image_meets_its_own_pose_bins_threshold_on_both_sides(delta, ok):
    """With per-pose thresholds, a turned face is held to its bin's (lower) threshold and a
    frontal face to the frontal one; the single threshold applies without bins."""
    from vigface.pose import YAW_BINS

    by_pose = {b: 0.5 for b in YAW_BINS} | {"left_35_60": 0.3, "right_35_60": 0.3}
    filt = DatasetFilter(REAL, tau_consistency=0.4, tau_leak=0.9, tau_consistency_by_pose=by_pose)
    turned = at_cos(OWN, unit(5), 0.3 + delta)
    frontal = at_cos(OWN, unit(5), 0.5 + delta)
    embs = np.stack([turned, frontal, turned])
    v = filt.image_verdicts(
        embs, np.stack([OWN] * 3), np.zeros(3, int), pose_bins=["left_35_60", "frontal", "frontal"]
    )
    assert list(v.consistent) == [ok, ok, False]  # the same face fails the frontal threshold
    plain = filt.image_verdicts(embs, np.stack([OWN] * 3), np.zeros(3, int))
    assert list(plain.consistent) == [False, True, False]  # no bins: the single 0.4
    with pytest.raises(ValueError, match="2 pose bins for 3 images"):
        filt.image_verdicts(embs, np.stack([OWN] * 3), np.zeros(3, int), pose_bins=["frontal"] * 2)
    assert "left_35_60 0.3" in filt.describe()
