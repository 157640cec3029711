"""The dataset pipeline on a tiny generator: outputs, resume, filters, replacements, errors."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from vigface.dataset.pipeline import DatasetBuilder
from vigface.dataset.spec import DatasetSpec, resolve_spec
from vigface.generator.artifact import Generator

runner = CliRunner()


def _generate(model, out, *extra):
    return runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(model),
            "--identities",
            "5",
            "--images-per-identity",
            "3",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--format",
            "imagefolder,recordio,webdataset",
            "--out",
            str(out),
            *extra,
        ],
    )


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        # the report and the cards say when they were written: the data files stay the same
        if p.is_file()
        and "work" not in p.parts
        and p.name not in ("report.json", "report.html", "README.md", "croissant.json")
    }


def test_generate_writes_every_format_and_resumes_byte_identically(tiny_generator, tmp_path):
    out = tmp_path / "ds"
    r = _generate(tiny_generator, out)
    assert r.exit_code == 0, r.output
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["num_classes"] == 5 and card["num_image"] == 15
    assert card["sampler"]["precision"] in ("float32", "bfloat16")
    assert len(list((out / "imagefolder").glob("*/*.jpg"))) == 15
    assert (out / "recordio" / "property").read_text() == "5,112,112"
    assert list((out / "webdataset").glob("shard-*.tar"))
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 15 and all(r["accepted"] == "True" for r in rows)
    report = json.loads((out / "report.json").read_text())
    assert set(report["attributes"]) >= {"C_k", "S_k", "D_k"}
    assert report["counts"]["generated"] == 15 and report["counts"]["accepted"] == 15
    assert "<img" in (out / "report.html").read_text()
    first = _files(out)

    # a crash after the first chunk: later chunks and all outputs are gone
    chunks = sorted((out / "work").glob("chunk_*.npz"))
    for p in chunks[1:]:
        p.unlink()
    for d in ("imagefolder", "recordio", "webdataset"):
        shutil.rmtree(out / d)
    r = _generate(tiny_generator, out)
    assert r.exit_code == 0, r.output
    assert _files(out) == first


def test_a_rerun_with_other_settings_is_refused_and_leaves_the_folder_alone(
    tiny_generator, tmp_path
):
    """Resuming into a folder drawn with another seed or guidance would mix two datasets'
    chunks; the CLI refuses, naming the field, and the dataset stays as it was."""
    out = tmp_path / "ds"
    assert _generate(tiny_generator, out, "--seed", "1").exit_code == 0
    before = _files(out)
    chunks = {p.name: p.read_bytes() for p in (out / "work").iterdir()}
    for extra, field in (
        (["--seed", "2"], "seed"),
        (["--seed", "1", "--guidance", "3"], "guidance"),
    ):
        r = _generate(tiny_generator, out, *extra)
        assert r.exit_code != 0
        assert f"{field}:" in r.output and "other settings" in r.output, r.output
    assert _files(out) == before
    assert {p.name: p.read_bytes() for p in (out / "work").iterdir()} == chunks
    again = _generate(tiny_generator, out, "--seed", "1")
    assert again.exit_code == 0, again.output  # the same settings still resume


def _spec(**kw):
    base = dict(identities=3, images_per_identity=2, steps=2, batch_size=4, max_attempts=2)
    return DatasetSpec(**{**base, **kw})


def test_the_real_filters_reject_on_both_sides_and_replace_identities(tiny_generator, tmp_path):
    """No stub: a first run with the filters open gives every first draw's cosines; a second
    run with thresholds between those values must reject exactly the draws beyond them."""
    gen = Generator.load(tiny_generator)
    cands = list(range(7, 40))
    opened = DatasetBuilder(
        gen,
        resolve_spec(_spec(tau_consistency=-1.0, tau_leak=1.0), gen.card),
        tmp_path / "a",
        cands,
        progress=False,
    )
    with pytest.raises(RuntimeError, match="once generate"):
        opened.unused_spares  # noqa: B018 (unknown before the draws)
    open_run = opened.run()
    assert open_run["counts"]["accepted"] == 6
    assert opened.unused_spares == cands[3:]  # no drop: every spare can be sold again
    rows = list(csv.DictReader((tmp_path / "a" / "manifest.csv").open()))
    own = sorted(float(r["cos_own"]) for r in rows)
    near = sorted(float(r["nearest_real_cos"]) for r in rows)
    tau_c = (own[1] + own[2]) / 2  # the two lowest first draws fail consistency
    tau_l = (near[-2] + near[-1]) / 2  # the highest first draw leaks
    filtered = DatasetBuilder(
        gen,
        resolve_spec(_spec(tau_consistency=tau_c, tau_leak=tau_l), gen.card),
        tmp_path / "b",
        cands,
        progress=False,
    )
    report = filtered.run()
    rows = list(csv.DictReader((tmp_path / "b" / "manifest.csv").open()))
    for r in rows:
        own_ok, leak_ok = float(r["cos_own"]) >= tau_c, float(r["nearest_real_cos"]) <= tau_l
        if r["accepted"] == "True":
            assert own_ok and leak_ok
        elif r["passed_consistency"] == "True" and r["passed_leakage"] == "True":
            pass  # passed alone, discarded with its dropped identity
        else:
            assert r["passed_consistency"] == str(own_ok) and r["passed_leakage"] == str(leak_ok)
    first = [r for r in rows if r["attempt"] == "0" and int(r["prototype_id"]) in (7, 8, 9)]
    assert sum(r["passed_consistency"] == "False" for r in first) == 2
    assert sum(r["passed_leakage"] == "False" for r in first) >= 1
    c = report["counts"]
    assert c["accepted"] == 6 and report["dataset"]["num_classes"] == 3
    refused = [r for r in rows if r["accepted"] == "False"]
    assert c["generated"] == 6 + len(refused)
    assert c["rejected_consistency"] == sum(r["passed_consistency"] == "False" for r in refused)
    assert c["rejected_leakage_prototypes"] == sum(r["passed_leakage"] == "False" for r in refused)
    assert c["identities_replaced"] == c["identities_dropped"]
    assert c["identities_replaced"] == len({r["prototype_id"] for r in rows}) - 3
    # the spares taken are the first of the queue; the rest were never drawn
    assert filtered.unused_spares == cands[3 + c["identities_replaced"] :]
    assert c["identities_replaced"] >= 1


def test_running_out_of_prototypes_is_a_clear_error(tiny_generator, tmp_path):
    r = _generate(
        tiny_generator, tmp_path / "x", "--tau-consistency", "0.9999", "--max-attempts", "1"
    )
    assert r.exit_code == 2 and "ran out of spare virtual prototypes" in r.output
    assert "failed consistency" in r.output and "cos_own >= 0.9999" in r.output


def test_a_filter_that_rejects_everything_ends_soon_naming_it(tiny_generator, tmp_path):
    r = _generate(tiny_generator, tmp_path / "x", "--tau-leak", "-1", "--spares", "2")
    assert r.exit_code == 2, r.output
    assert "3 identities dropped with 2 spares" in r.output
    assert "nearest real prototype <= -1" in r.output
    drawn = re.search(
        r"Of (\d+) images drawn, 0 failed consistency and (\d+) leakage "
        r"\(prototypes (\d+), gallery 0, judge 0\)",
        r.output,
    )
    assert drawn and drawn[1] == drawn[2] == drawn[3], r.output
    r = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_generator),
            "--identities",
            "41",
            "--images-per-identity",
            "1",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert r.exit_code == 2 and "only 40 free virtual prototypes" in r.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--pose", "sideways"], "unknown preset"),
        (["--pose", '{"frontal": 0.7}'], "sum to 1"),
        (["--format", "tfrecord"], "formats"),
        (["--guidance", "99"], "guidance"),
        (["--steps", "0"], "steps"),
        (["--precision", "fp16"], "--precision must be one of"),
    ],
)
def test_bad_orders_name_the_field(tiny_generator, tmp_path, args, msg):
    r = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_generator),
            "--identities",
            "2",
            "--images-per-identity",
            "1",
            "--out",
            str(tmp_path / "z"),
            *args,
        ],
    )
    assert r.exit_code == 2 and msg in r.output
    assert not (tmp_path / "z" / "dataset_card.json").exists()


def test_pose_draws_only_bins_the_bank_has(tiny_generator, tmp_path):
    gen = Generator.load(tiny_generator)
    spec = DatasetSpec(
        identities=2,
        images_per_identity=2,
        steps=1,
        tau_consistency=-1,
        tau_leak=1,
        pose="uniform_yaw",
    )
    b = DatasetBuilder(gen, resolve_spec(spec, gen.card), tmp_path, progress=False)
    drawn = np.bincount(b.bank.bins[b.plan.pose_idx], minlength=7) / 4
    assert np.abs(drawn - b.plan.pose_weights).sum() / 2 == 0  # the bank has frontal faces only


def test_real_augment_fills_small_classes_from_their_own_prototypes(tiny_generator, tmp_path):
    from conftest import make_face_folder

    real = make_face_folder(tmp_path / "real", identities=6, per_identity=2)
    # person_000..005 have 2 images each; give person_002 five so it needs none
    from conftest import jpeg_bytes, synthetic_identity_images

    for j, img in enumerate(synthetic_identity_images(np.random.default_rng(0), 2, 3)):
        (real / "person_002" / f"extra_{j}.jpg").write_bytes(jpeg_bytes(img))
    out = tmp_path / "aug"
    r = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_generator),
            "--mode",
            "real_augment",
            "--real-data",
            str(real),
            "--images-per-identity",
            "4",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    per_class = {}
    for row in rows:
        per_class[row["identity"]] = per_class.get(row["identity"], 0) + 1
        assert row["prototype_kind"] == "real"
    assert per_class == {f"person_{i:03d}": 2 for i in (0, 1, 3, 4, 5)}  # filled up to 4
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["num_classes"] == 5 and card["kind"] == "real"
    r = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_generator),
            "--mode",
            "real_augment",
            "--images-per-identity",
            "4",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "--real-data" in r.output


def test_each_draw_meets_its_pose_bins_threshold(tiny_generator, tmp_path):
    """Per-pose thresholds reach the filter through the builder's own draw and verdict steps:
    with one yaw bin held to an impossible threshold and the others open, every draw of that
    bin fails consistency and every other draw passes."""
    from vigface.dataset.chunks import Draw
    from vigface.pose import YAW_BINS

    gen = Generator.load(tiny_generator)
    frontal = np.asarray(gen.pose_landmarks, np.float32).reshape(-1, 5, 2)
    turned = frontal.copy()  # the nose moved half an eye distance: about 42 degrees of yaw
    turned[:, 2, 0] += 0.5 * (turned[:, 1, 0] - turned[:, 0, 0])
    gen.pose_landmarks = np.concatenate([frontal, turned])
    spec = resolve_spec(
        _spec(identities=6, tau_consistency=-1.0, tau_leak=1.0, pose="uniform_yaw"), gen.card
    )
    probe = DatasetBuilder(gen, spec, tmp_path / "a", progress=False)
    slots = range(len(probe.slot_images))
    bin_of = {
        (s, j): YAW_BINS[probe.bank.bins[probe.plan.pose_row(s, j)]]
        for s in slots
        for j in range(probe.slot_images[s])
    }
    closed = sorted(bin_of.values())[0]
    assert len(set(bin_of.values())) > 1  # both sides of the threshold are drawn
    by_pose = {b: -1.0 for b in YAW_BINS} | {closed: 1.0}
    spec = spec.model_copy(update={"tau_consistency_by_pose": by_pose})
    builder = DatasetBuilder(gen, spec, tmp_path / "b", progress=False)
    assert f"{closed} 1" in builder.filter.describe()
    pending = [Draw(s, builder.candidates[s], j, 0) for (s, j) in bin_of]
    _, verdicts = builder._verdicts(builder._draw_images(pending, 0, {}), pending)
    assert list(verdicts.consistent) == [bin_of[(d.slot, d.index)] != closed for d in pending]
    assert builder.draw_settings()["tau_consistency_by_pose"] == by_pose  # a resume must match
