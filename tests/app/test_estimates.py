"""What an order is told about its time: the first order of a model gets an estimate from the
rate its calibration drew at, an order behind a shard at work counts that whole shard, and a
running job's estimate counts its finalize step."""

from __future__ import annotations

import json
import shutil

import numpy as np
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


def _posed_service(tiny_generator, tmp_path, monkeypatch, tables: dict, **card_extra):
    """A service on a copy of the tiny generator whose card holds the per-pose calibration
    ``tables`` and whose pose bank has frontal faces and faces turned about 40 degrees either
    way; returns (client, auth headers)."""
    store = tmp_path / "store"
    shutil.copytree(tiny_generator, store / "posed")
    card_path = store / "posed" / "model_card.json"
    card = json.loads(card_path.read_text()) | card_extra
    card["filters"]["tau_consistency_by_pose"] = tables
    card_path.write_text(json.dumps(card))
    base = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32)
    left, right = base.copy(), base.copy()
    left[2, 0] -= 18
    right[2, 0] += 18
    np.save(store / "posed" / "pose_landmarks.npy", np.stack([base, left, right] * 4))
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, _, key = embedded_service(tmp_path, "posed")
    return TestClient(api), {"Authorization": f"Bearer {key}"}


def test_an_order_for_a_pose_the_model_does_not_reach_is_warned_at_admission(
    tiny_generator, tmp_path, monkeypatch
):
    """The card's calibration says how often the faces drawn for each |yaw| group show it;
    an order asking a group the model shows in under a fifth of its draws is told so in its
    record, and one asking what the model reaches is not."""
    reach = {"frontal": 0.9, "15_35": 0.5, "35_60": 0.06}
    tables = {
        "1": {g: {"tau_consistency": -1.0, "shown_in_group": r, "shown_mean_abs_yaw": 20.0}
              for g, r in reach.items()}
    }  # fmt: skip
    c, h = _posed_service(tiny_generator, tmp_path, monkeypatch, tables)
    bank = {b for b in ("left_35_60", "right_35_60")}
    turned = c.post("/v1/jobs", json={**ORDER, "pose": {b: 0.5 for b in sorted(bank)}},
                    headers=h)  # fmt: skip
    assert turned.status_code == 202, turned.text
    warning = turned.json()["warnings"]
    assert len(warning) == 1 and "35-60" in warning[0] and "6%" in warning[0]
    frontal = c.post("/v1/jobs", json={**ORDER, "pose": "frontal"}, headers=h).json()
    assert frontal["warnings"] == []


def test_the_pose_warning_reads_the_calibration_at_the_guidance_turned_faces_are_drawn_at(
    tiny_generator, tmp_path, monkeypatch
):
    """Turned faces drawn at their own pose guidance (turned_pose_guidance) are warned by the
    reach measured at that weight, not at the order's pose_guidance."""
    tables = {
        w: {g: {"tau_consistency": -1.0, "shown_in_group": r, "shown_mean_abs_yaw": 30.0}
            for g, r in (("frontal", 0.9), ("35_60", reach))}
        for w, reach in (("1", 0.06), ("3", 0.7))
    }  # fmt: skip
    c, h = _posed_service(tiny_generator, tmp_path, monkeypatch, tables, pose_drop_prob=0.1)
    pose = {"left_35_60": 0.5, "right_35_60": 0.5}
    at1 = c.post("/v1/jobs", json={**ORDER, "pose": pose}, headers=h).json()
    assert len(at1["warnings"]) == 1 and "higher turned_pose_guidance" in at1["warnings"][0]
    at3 = c.post("/v1/jobs", json={**ORDER, "pose": pose, "turned_pose_guidance": 3.0}, headers=h)
    assert at3.status_code == 202, at3.text
    assert at3.json()["warnings"] == []
    bad = c.post("/v1/jobs", json={**ORDER, "turned_pose_guidance": -1.0}, headers=h)
    assert bad.status_code == 422 and "turned_pose_guidance" in bad.text
