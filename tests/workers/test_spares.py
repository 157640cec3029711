"""Spares a shard did not need go back to the ledger when it succeeds; the ones that replaced a
dropped identity stay sold with the job (their images may have been drawn)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import embedded_service, ui_login
from jobstore.models import Job, LedgerEntry, Shard
from workers.embedded import EmbeddedWorker

ORDER = {"identities": 3, "images_per_identity": 1, "steps": 2, "seed": 5}


def _service(tiny_generator, tmp_path, monkeypatch, spare_fraction=3.0):
    store = tmp_path / "models"
    shutil.copytree(tiny_generator, store / "m")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    # by default one shard of 3 identities with 9 spares: room for a few drops, never all
    api, settings, key = embedded_service(
        tmp_path, "m", shard_identities=3, spare_fraction=spare_fraction, sampler_batch_size=4
    )
    return api, settings, TestClient(api), {"Authorization": f"Bearer {key}"}


def _run_all(api, settings):
    worker = EmbeddedWorker(api.state.sessions, settings)
    while worker.run_once():
        pass


def _one_attempt(api, job_id) -> None:
    """Record the job with one draw per image (an order cannot set it; the filters' knob is
    the spec's), so an image that fails once drops its identity."""
    with api.state.sessions() as db:
        job = db.get(Job, job_id)
        job.spec = {**job.spec, "max_attempts": 1}
        db.commit()


def _held(api, job_id) -> set[int]:
    with api.state.sessions() as db:
        return {r.prototype_id for r in db.query(LedgerEntry).filter_by(job_id=job_id)}


def _free(c, h) -> int:
    return {m["name"]: m for m in c.get("/v1/models", headers=h).json()}["m"][
        "free_virtual_identities"
    ]


def test_a_shard_without_drops_gives_every_spare_back(tiny_generator, tmp_path, monkeypatch):
    api, settings, c, h = _service(tiny_generator, tmp_path, monkeypatch)
    free = _free(c, h)
    job = c.post("/v1/jobs", json={**ORDER, "tau_consistency": -1.0}, headers=h).json()
    assert job["identities_allocated"] == 3 + 9 and _free(c, h) == free - 12
    _run_all(api, settings)
    done = c.get(f"/v1/jobs/{job['id']}", headers=h).json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["spares_released"] == 9 and done["identities_allocated"] == 12
    with api.state.sessions() as db:
        shard = db.query(Shard).filter_by(job_id=job["id"]).one()
        slots = set(shard.prototypes[:3])
    assert _held(api, job["id"]) == slots  # the delivered identities stay sold
    assert _free(c, h) == free - 3
    # the job page says so
    ui_login(c, h["Authorization"].split()[1])
    page = c.get(f"/ui/jobs/{job['id']}").text
    assert "9 given back: unused spares and unstarted shards" in page


def test_spares_that_replaced_a_dropped_identity_stay_sold(tiny_generator, tmp_path, monkeypatch):
    """No stub: an open run of the very shard the job will get (same rows, seed, settings)
    gives each slot's first draw; the order's threshold then sits just above the lowest, so
    that identity is dropped (one attempt) and at least one spare is drawn, the rest not."""
    from workers.builders import shard_builder
    from workers.shard_state import Claim

    api, settings, c, h = _service(tiny_generator, tmp_path, monkeypatch)
    free = _free(c, h)
    probe = c.post("/v1/jobs", json={**ORDER, "tau_consistency": -1.0}, headers=h).json()
    _one_attempt(api, probe["id"])
    with api.state.sessions() as db:
        job, shard = db.get(Job, probe["id"]), db.query(Shard).filter_by(job_id=probe["id"]).one()
        rows = list(shard.prototypes)
        builder = shard_builder(settings, Claim.of(job, shard))
    builder.run()
    with (builder.out / "manifest.csv").open() as f:
        first = sorted(float(r["cos_own"]) for r in csv.DictReader(f))
    assert len(first) == 3
    c.post(f"/v1/jobs/{probe['id']}/cancel", headers=h)  # never started: its rows are free
    assert _free(c, h) == free

    tau = (first[0] + first[1]) / 2
    job = c.post("/v1/jobs", json={**ORDER, "tau_consistency": tau}, headers=h).json()
    _one_attempt(api, job["id"])
    with api.state.sessions() as db:
        assert db.query(Shard).filter_by(job_id=job["id"]).one().prototypes == rows
    _run_all(api, settings)
    done = c.get(f"/v1/jobs/{job['id']}", headers=h).json()
    assert done["status"] == "succeeded", done
    report = c.get(f"/v1/jobs/{job['id']}/report", headers=h)
    replaced = report.json()["counts"]["identities_replaced"]
    assert 1 <= replaced < 9
    used = rows[: 3 + replaced]  # slots, then spares in the order they were taken
    assert _held(api, job["id"]) == set(used)
    assert done["progress"]["spares_released"] == 9 - replaced
    assert done["identities_allocated"] - done["progress"]["spares_released"] == 3 + replaced
    assert _free(c, h) == free - 3 - replaced


# ---- sizing spares from a measured drop rate ---------------------------------------------


def test_per_image_failure_inverts_the_drop_probability():
    from vigface.dataset.spares import drop_probability, per_image_failure

    f = per_image_failure(dropped=26, drawn=226, images_per_identity=10)
    assert drop_probability(f, 10) == pytest.approx(26 / 226)
    assert drop_probability(f, 1) == pytest.approx(f) and drop_probability(f, 50) > 26 / 226
    assert per_image_failure(0, 5, 3) == 0.0
    for bad in ((3, 2, 1), (-1, 2, 1), (0, 0, 1), (1, 2, 0)):
        with pytest.raises(ValueError, match="dropped <= drawn"):
            per_image_failure(*bad)


@pytest.mark.parametrize("n,q", [(1, 0.3), (5, 0.125), (50, 0.125), (200, 0.02)])
def test_spares_are_the_negative_binomial_quantile(n, q):
    """Against simulated shards: with the spares given, a shard runs out at most
    1 - confidence of the time; with one fewer, more often than that (both sides)."""
    from vigface.dataset.spares import spares_needed

    rng = np.random.default_rng(0)
    trials = 200_000
    # failures before n successes, drawn directly: the spares a shard consumes
    used = rng.negative_binomial(n, 1 - q, size=trials)
    for conf in (0.9, 0.99):
        s = spares_needed(n, q, conf, cap=10_000)
        assert (used <= s).mean() >= conf - 0.003
        assert (used <= s - 1).mean() < conf + 0.003
    assert spares_needed(n, 0.0, 0.999, cap=100) == 0
    assert spares_needed(n, 1.0, 0.999, cap=77) == 77


def test_the_fraction_stays_the_floor_and_the_measured_rate_raises_it():
    from vigface.dataset.spares import spares_for_order

    assert spares_for_order({}, 5, 10, 0.2, 0.999) == 1  # no measurement: the fraction
    assert spares_for_order({}, 50, 10, 0.2, 0.999) == 10
    card = {"filters": {"drop_rate": {"per_image_failure": 0.0122}}}
    small, large = (spares_for_order(card, n, 10, 0.2, 0.999) for n in (5, 50))
    assert small >= 4 and large > 10  # a 5-identity shard with one spare ran out 1 in 3
    assert spares_for_order(card, 50, 1, 0.2, 0.999) == 10  # one image: rarely dropped
    assert spares_for_order(card, 50, 50, 0.2, 0.999) > large  # many images: often
    # measured at the card's thresholds: an order with its own gets the fraction
    assert spares_for_order(card, 50, 10, 0.2, 0.999, own_thresholds=True) == 10


def test_turned_orders_reserve_spares_from_their_own_groups_drop_rate():
    """Turned faces are dropped more often (latent112: 17 of 40 identities of a 35-60 order
    against 1 of 40 frontal): an order asking a group with a measured rate of its own reserves
    from it, weighted by the share of its images in each group."""
    from vigface.dataset.spares import order_failure, spares_for_order

    card = {"filters": {"drop_rate": {"per_image_failure": 0.01},
                        "drop_rate_by_pose": {"35_60": {"per_image_failure": 0.06}}}}  # fmt: skip
    assert order_failure(card, {"frontal": 1.0}) == pytest.approx(0.01)
    assert order_failure(card, {"35_60": 1.0}) == pytest.approx(0.06)
    half = order_failure(card, {"frontal": 0.5, "35_60": 0.5})
    assert half == pytest.approx(1 - (0.99 * 0.94) ** 0.5) and 0.01 < half < 0.06
    assert order_failure(card, None) == pytest.approx(0.01)  # no pose bank: the overall rate
    frontal, turned = (spares_for_order(card, 40, 8, 0.2, 0.999, group_shares={g: 1.0})
                       for g in ("frontal", "35_60"))  # fmt: skip
    assert 8 <= frontal < 20 < turned  # the fraction (8 of 40) would run out on a turned order
    only_turned = {"filters": {"drop_rate_by_pose": {"35_60": {"per_image_failure": 0.06}}}}
    assert order_failure(only_turned, {"frontal": 1.0}) is None  # nothing measured for it
    assert spares_for_order(only_turned, 40, 8, 0.2, 0.999, group_shares={"frontal": 1.0}) == 8


def _tiny_run(store, tmp_path, name, *extra):
    from typer.testing import CliRunner

    from app.cli import app as cli

    out = tmp_path / name
    r = CliRunner().invoke(
        cli,
        ["generate", "--model", str(store / "m"), "--identities", "6", "--images-per-identity",
         "3", "--steps", "2", "--batch-size", "8", "--spares", "30", "--out", str(out), *extra],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def test_a_measured_drop_rate_reserves_more_spares(tiny_generator, tmp_path, monkeypatch):
    """The whole path: a real run at a threshold that drops identities, its report recorded
    in the card by `vigface calibrate-drops`, then an order reserves what the rate says."""
    import json

    from typer.testing import CliRunner

    from app.cli import app as cli
    from vigface.dataset.spares import spares_needed

    api, settings, c, h = _service(tiny_generator, tmp_path, monkeypatch, spare_fraction=0.2)
    store = tmp_path / "models"
    open_run = _tiny_run(store, tmp_path, "open")
    own = json.loads((open_run / "report.json").read_text())["cos_own"]
    card_path = store / "m" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["filters"]["tau_consistency"] = own["p05"]  # the weakest identity drops, each time
    card_path.write_text(json.dumps(card))
    run = _tiny_run(store, tmp_path, "strict")
    counts = json.loads((run / "report.json").read_text())["counts"]
    assert counts["identities_dropped"] >= 1

    runner = CliRunner()
    r = runner.invoke(cli, ["calibrate-drops", "--model", str(store / "m"), "--dataset", str(run)])
    assert r.exit_code == 0, r.output
    rate = json.loads(card_path.read_text())["filters"]["drop_rate"]
    assert rate["identities_dropped"] == counts["identities_dropped"]
    assert rate["identities_drawn"] == 6 + counts["identities_replaced"]
    assert rate["images_per_identity"] == 3 and 0 < rate["per_image_failure"] < 1

    from model_store.description import describe

    describe.cache_clear()
    order = {"identities": 3, "images_per_identity": 3, "steps": 2}
    r = c.post("/v1/jobs", json=order, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()
    q = 1 - (1 - rate["per_image_failure"]) ** 3
    expected = spares_needed(3, q, settings.spare_confidence, cap=1000)
    assert job["identities_allocated"] == 3 + expected and expected > 1  # the fraction's 1
    own = c.post("/v1/jobs", json={**order, "tau_leak": 0.9}, headers=h).json()
    assert own["identities_allocated"] == 3 + 1  # not measured at its thresholds
    many = {**order, "images_per_identity": 100}  # nearly every identity would be dropped
    r = c.post("/v1/jobs", json=many, headers=h)
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "identities", r.text
    assert "at 100 images per identity the filters drop" in r.text

    # refusals: thresholds the order set itself, a folder without a report, another model
    own_thresholds = _tiny_run(store, tmp_path, "own", "--tau-consistency", "0.1")
    for folder, why in ((own_thresholds, "the card gives"), (tmp_path, "not a `vigface generate`")):
        r = runner.invoke(
            cli, ["calibrate-drops", "--model", str(store / "m"), "--dataset", str(folder)]
        )
        assert r.exit_code == 2 and "--dataset" in r.output and why in r.output, r.output
    hopeless = tmp_path / "hopeless"  # a report edited so that every identity dropped
    hopeless.mkdir()
    edited = json.loads((run / "report.json").read_text())
    edited["counts"]["identities_dropped"] = 6 + edited["counts"]["identities_replaced"]
    (hopeless / "report.json").write_text(json.dumps(edited))
    r = runner.invoke(
        cli, ["calibrate-drops", "--model", str(store / "m"), "--dataset", str(hopeless)]
    )
    assert r.exit_code == 2 and "were dropped" in r.output, r.output
    # a run whose every image asked 35-60 degrees records that group's rate beside the other
    base = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32)
    left, right = base.copy(), base.copy()
    left[2, 0] -= 18
    right[2, 0] += 18
    np.save(store / "m" / "pose_landmarks.npy", np.stack([base, left, right] * 4))
    turned = _tiny_run(
        store, tmp_path, "turned", "--pose", '{"left_35_60": 0.5, "right_35_60": 0.5}'
    )
    r = runner.invoke(
        cli, ["calibrate-drops", "--model", str(store / "m"), "--dataset", str(turned)]
    )
    assert r.exit_code == 0 and '"pose_group": "35_60"' in r.output, r.output
    filters = json.loads(card_path.read_text())["filters"]
    assert filters["drop_rate"] == rate  # the overall rate stays
    turned_counts = json.loads((turned / "report.json").read_text())["counts"]
    by_pose = filters["drop_rate_by_pose"]["35_60"]
    assert by_pose["identities_dropped"] == turned_counts.get("identities_dropped", 0)
    card = json.loads(card_path.read_text())
    card["name"] = "another"
    card_path.write_text(json.dumps(card))
    r = runner.invoke(cli, ["calibrate-drops", "--model", str(store / "m"), "--dataset", str(run)])
    assert r.exit_code == 2 and "not 'another'" in r.output, r.output
