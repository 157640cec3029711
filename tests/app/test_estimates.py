"""What an order is told about its time: the first order of a model gets an estimate from the
rate its calibration drew at, an order behind a shard at work counts that whole shard, and a
running job's estimate counts its finalize step."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from conftest import embedded_service
from jobstore.models import Job, Shard, ShardStatus, utcnow

ORDER = {"identities": 3, "images_per_identity": 2, "steps": 1, "tau_consistency": -1.0,
         "tau_leak": 1.0}  # fmt: skip


@pytest.fixture
def rated(tiny_generator, tmp_path, monkeypatch):
    """The tiny model with a calibration that drew at 2 images a second."""
    store = tmp_path / "store"
    shutil.copytree(tiny_generator, store / "rated")
    card_path = store / "rated" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["filters"]["calibration"] = {"img_per_s": 2.0}
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, settings, key = embedded_service(tmp_path, "rated", shard_identities=2)
    return TestClient(api), {"Authorization": f"Bearer {key}"}, api


def test_the_first_order_of_a_model_is_estimated_from_its_calibration(rated):
    c, h, _ = rated
    job = c.post("/v1/jobs", json=ORDER, headers=h).json()
    assert job["progress"]["eta_at_submission_s"] == 3.0  # 6 images at 2 a second
    assert job["eta_seconds"] == 3.0


def test_an_order_behind_a_shard_at_work_counts_the_whole_shard(rated):
    c, h, api = rated
    big = c.post("/v1/jobs", json={**ORDER, "identities": 4, "images_per_identity": 4},
                 headers=h).json()  # fmt: skip
    with api.state.sessions() as db:  # a worker took its first shard (8 images)
        shard = db.query(Shard).filter_by(job_id=big["id"], index=0).one()
        shard.status = ShardStatus.RUNNING
        db.get(Job, big["id"]).status = "running"
        db.commit()
    small = c.post("/v1/jobs", json={**ORDER, "identities": 1, "images_per_identity": 1},
                   headers=h).json()  # fmt: skip
    # 1 image of its own, the running shard's 8, and one image of the other shard's turn
    assert small["progress"]["eta_at_submission_s"] == pytest.approx((1 + 8 + 1) / 2.0)


def test_a_running_jobs_estimate_counts_the_finalize_step(rated):
    c, h, api = rated
    done = c.post("/v1/jobs", json=ORDER, headers=h).json()
    with api.state.sessions() as db:  # an earlier job of the model took 1.5 s to finalize
        job = db.get(Job, done["id"])
        job.status, job.finished_at = "succeeded", utcnow()
        job.progress = {**job.progress, "finalize_seconds": 1.5}
        db.commit()
    from app.services.views import finalize_seconds

    with api.state.sessions() as db:
        assert finalize_seconds(db, "rated", 12) == pytest.approx(1.5 * 12 / 6)
