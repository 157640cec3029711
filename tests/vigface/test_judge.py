"""The independent judge: distance figures on hand-built descriptors, the verdict on both
sides, and dlib's descriptor on real pixels."""

import numpy as np
import pytest

from vigface.evaluation.judge import OutsideJudge, degrade
from vigface.evaluation.judge_figures import identity_distances, verdict


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
    assert d["spread"] == pytest.approx(between, abs=1e-6)  # two identities: the one pair
    c = _unit(e[0] + 0.1 * e[1])
    three = identity_distances(np.stack([e[0], e[1], c]), np.arange(3))
    pairs = [np.linalg.norm(e[0] - e[1]), np.linalg.norm(e[0] - c), np.linalg.norm(e[1] - c)]
    assert three["spread"] == pytest.approx(np.mean(pairs), abs=1e-6)
    assert three["spread"] > three["between"]  # nearest neighbours are nearer than the mean
    to_real = (min(np.linalg.norm(c0 - r) for r in real) + np.linalg.norm(e[2] - real[1])) / 2
    assert d["centre_to_real"] == pytest.approx(to_real, abs=1e-6)
    # a real person is not compared with their own images
    own = identity_distances(emb, labels, real, np.array(["x", "b"]), exclude_same_name=["a", "b"])
    assert own["centre_to_real"] == pytest.approx(
        (min(np.linalg.norm(c0 - r) for r in real) + np.linalg.norm(e[2] - real[0])) / 2, abs=1e-6
    )


@pytest.mark.parametrize("delta,ok", [(-1e-3, False), (1e-3, True)])
def test_spread_verdict_on_both_sides_and_absent_for_old_calibrations(delta, ok):
    real = {"within": 0.4, "between": 0.6, "spread": 0.9, "resolution": 112}
    syn = {"within": 0.3, "between": 0.7, "spread": 0.9 + delta}
    v = verdict(syn, real)
    assert v["as_spread_as_real"] is ok
    assert ("as spread out as real people" in v["text"]) is ok
    assert ("more crowded than real people" in v["text"]) is not ok
    old = verdict(syn, {k: x for k, x in real.items() if k != "spread"})
    assert old["as_spread_as_real"] is None and "spread" not in old["text"]


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
    judge = OutsideJudge()
    emb = judge.embed(images[:4])
    assert emb.shape == (4, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(judge.embed(images[:1]), emb[:1], atol=1e-6)  # deterministic
    small = degrade(images[:2], 32)
    assert small.shape == (2, 112, 112, 3) and not np.array_equal(small, images[:2])


def test_a_calibration_without_a_gallery_judges_distinctness_only():
    real = {"within": 0.4, "between": 0.6, "resolution": 64}
    v = verdict({"within": 0.3, "between": 0.7, "centre_to_real": 0.9}, real)
    assert v["as_distinct_as_real"] is True and v["as_far_as_real"] is None
    assert "not measured" in v["text"] and "at 64 px" in v["text"]


def test_cli_calibrates_per_resolution_into_the_card(tiny_generator, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from app.cli import app as cli
    from tests.conftest import make_face_folder

    model = tmp_path / "gen"
    shutil.copytree(tiny_generator, model, ignore=shutil.ignore_patterns("checkpoints"))
    data = make_face_folder(tmp_path / "synthetic", identities=4, per_identity=3, seed=5)
    heldout = make_face_folder(tmp_path / "heldout", identities=5, per_identity=3, seed=6)
    runner = CliRunner()
    common = ["outside-judge", "--data", str(data), "--model", str(model),
              "--heldout", str(heldout), "--update-card"]  # fmt: skip
    r = runner.invoke(cli, common)  # the DiT's own resolution (16 px) becomes judge.real
    assert r.exit_code == 0, r.output
    judge = json.loads((model / "model_card.json").read_text())["judge"]
    assert judge["resolution"] == 16 and judge["real"]["resolution"] == 16
    assert "centre_to_real" not in judge["real"]  # no --real-data: no nearness figure
    r = runner.invoke(cli, [*common, "--resolution", "32"])  # e.g. an upsampler's side
    assert r.exit_code == 0, r.output
    judge = json.loads((model / "model_card.json").read_text())["judge"]
    assert judge["real"]["resolution"] == 16 and judge["real_at"]["32"]["resolution"] == 32
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["real"]["resolution"] == 32 and out["as_far_as_real"] is None
    r = runner.invoke(
        cli, ["outside-judge", "--data", str(data), "--resolution", "16", "--update-card"]
    )
    assert r.exit_code != 0 and "--update-card needs --model and --heldout" in r.output


def _people(rng, counts, centres=0.25, dim=128):
    """Descriptors of people of one kind: unit centres scattered by ``centres`` around one
    direction (faces occupy a small cone, as in dlib's space), each person's images scattered
    around their centre so that within-person distances are about 0.33, as real people's."""
    base = np.eye(dim)[0]
    emb, names = [], []
    for i, n in enumerate(counts):
        centre = _unit(base + centres * rng.normal(size=dim) / np.sqrt(dim))
        emb.append(_unit(centre + 0.24 * rng.normal(size=(n, dim)) / np.sqrt(dim)))
        names += [f"p{i:03d}"] * n
    return np.concatenate(emb), np.asarray(names)


def test_between_is_compared_at_the_real_peoples_image_counts():
    """Held-out people with few images each and a set of the same kind of identities with
    ten each: over every image the set looks less distinct (its centres are less noisy);
    at equal counts the two agree. Identities drawn farther apart do come out as more
    distinct, so matching does not hide a real difference."""
    from vigface.evaluation.judge_figures import compare, reference_figures

    rng = np.random.default_rng(0)
    counts = rng.choice([2, 2, 2, 3, 4, 6, 12], size=60)  # like LFW dev: half the people 2
    real_emb, real_names = _people(rng, counts)
    ref = reference_figures(real_emb, real_names, None, None, 40, 32, repeats=5)
    assert ref["identities"] == 40 and sorted(ref["capped"]) == ["10", "2", "3", "5"]
    same_emb, same_labels = _people(rng, [10] * 40)
    ours, shown = compare(same_emb, same_labels, ref)
    assert ours["counts_matched"] and ours["images_per_identity"]["cap"] == 10
    assert shown is ref["capped"]["10"]
    # the bias the matching removes: with every image the centres are less noisy, so nearer
    assert ours["as_drawn"]["between"] < shown["between"] - 0.01
    assert abs(ours["between"] - shown["between"]) < 0.01
    assert abs(ours["within"] - shown["within"]) < 0.01
    far_emb, far_labels = _people(rng, [10] * 40, centres=0.35)  # identities farther apart
    far, _ = compare(far_emb, far_labels, ref)
    assert far["between"] > shown["between"] + 0.05
    v = verdict(far | {"within": shown["within"] - 0.01}, shown)
    assert v["as_distinct_as_real"] and "image counts (" in v["text"]


def test_count_matching_caps_both_sides_and_needs_a_calibration_with_counts():
    from vigface.evaluation.judge_figures import compare, reference_figures

    rng = np.random.default_rng(1)
    real_emb, real_names = _people(rng, rng.choice([2, 3, 8], size=30))
    ref = reference_figures(real_emb, real_names, None, None, 20, 32, repeats=3)
    emb, labels = _people(rng, [3] * 20)  # fewer images than some people have
    ours, shown = compare(emb, labels, ref)
    assert ours["images_per_identity"]["cap"] == 3 and shown is ref["capped"]["3"]
    old = {k: v for k, v in ref.items() if k not in ("counts", "capped")}  # an older card
    ours, shown = compare(emb, labels, old)
    assert ours["counts_matched"] is False and shown is old and "as_drawn" not in ours
    assert "not matched" in verdict(ours, shown)["text"]
    ours, _ = compare(emb[labels != "p000"], labels[labels != "p000"], ref)  # 19 identities
    assert ours["counts_matched"] is False
