"""The identity ledger: a virtual identity is sold once, whatever the model is called, and
concurrent submissions of one idempotency key get one job and no server error (PostgreSQL)."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.auth import create_key, create_team
from conftest import postgres_url
from jobstore.models import LedgerEntry
from jobstore.settings import Settings
from model_store.description import describe
from model_store.loader import load_generator


@pytest.fixture
def api(tiny_generator, tmp_path, monkeypatch):
    """A store with the tiny generator under two names (a copy), on PostgreSQL."""
    store = tmp_path / "models"
    shutil.copytree(tiny_generator, store / "tiny")
    shutil.copytree(tiny_generator, store / "tiny-copy")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    load_generator.cache_clear()
    describe.cache_clear()
    from jobstore.session import get_engine

    get_engine.cache_clear()
    settings = Settings(
        home=tmp_path,
        database_url=postgres_url(),
        default_model="tiny",
        shard_identities=2,
        public_url="http://testserver",
    )
    app = create_app(settings)
    with app.state.sessions() as db:
        create_team(db, "alpha", quota=10_000)
        create_team(db, "beta", quota=10_000)
        keys = {t: create_key(db, t) for t in ("alpha", "beta")}
    yield app, keys
    get_engine(settings.database_url).dispose()


ORDER = {"identities": 3, "images_per_identity": 1, "steps": 1}


def test_aliases_of_one_model_share_one_ledger(api):
    app, keys = api
    c = TestClient(app)
    a = c.post("/v1/jobs", json={**ORDER, "model": "tiny"}, headers={"X-API-Key": keys["alpha"]})
    b = c.post(
        "/v1/jobs", json={**ORDER, "model": "tiny-copy"}, headers={"X-API-Key": keys["beta"]}
    )
    assert a.status_code == b.status_code == 202, (a.text, b.text)
    with app.state.sessions() as db:
        rows = db.query(LedgerEntry).all()
    by_job = {}
    for r in rows:
        by_job.setdefault(r.job_id, set()).add(r.prototype_id)
    first, second = by_job[a.json()["id"]], by_job[b.json()["id"]]
    assert first and second and not first & second  # never the same prototype twice
    assert len({r.prototype_set for r in rows}) == 1  # one ledger for both names
    for bad in ("/tmp", "../../etc", "tiny/", "x" * 300):
        r = c.post("/v1/jobs", json={**ORDER, "model": bad}, headers={"X-API-Key": keys["alpha"]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "model", bad


def test_free_identities_count_every_alias(api):
    app, keys = api
    c = TestClient(app)
    models = {
        m["name"]: m for m in c.get("/v1/models", headers={"X-API-Key": keys["alpha"]}).json()
    }
    total = models["tiny"]["virtual_identities"]
    job = c.post("/v1/jobs", json=ORDER, headers={"X-API-Key": keys["alpha"]}).json()
    models = {
        m["name"]: m for m in c.get("/v1/models", headers={"X-API-Key": keys["alpha"]}).json()
    }
    used = total - models["tiny-copy"]["free_virtual_identities"]
    assert used == job["identities_allocated"] == 3 + 2  # 2 shards, one spare each


def test_ten_concurrent_submissions_of_one_key_make_one_job(api):
    app, keys = api
    c = TestClient(app)
    headers = {"X-API-Key": keys["alpha"], "Idempotency-Key": "same-order"}

    def post(_):
        return c.post("/v1/jobs", json=ORDER, headers=headers)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, range(10)))
    assert all(r.status_code in (200, 202) for r in answers), [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.status_code == 202 for r in answers) == 1


def test_cancel_gives_back_quota_and_the_prototypes_of_shards_that_never_ran(api):
    app, keys = api
    c = TestClient(app)
    h = {"X-API-Key": keys["alpha"]}
    free = {m["name"]: m["free_virtual_identities"] for m in c.get("/v1/models", headers=h).json()}
    job = c.post("/v1/jobs", json=ORDER, headers=h).json()
    with app.state.sessions() as db:  # shard 0 ran (a worker claimed it), shard 1 never did
        from jobstore.models import Shard

        first = db.query(Shard).filter_by(job_id=job["id"], index=0).one()
        first.attempts, first.status = 1, "running"
        kept = set(first.prototypes)
        db.commit()
    canceled = c.post(f"/v1/jobs/{job['id']}/cancel", headers=h).json()
    assert canceled["status"] == "canceled" and canceled["progress"]["identities_released"] == 2
    with app.state.sessions() as db:
        left = {r.prototype_id for r in db.query(LedgerEntry).filter_by(job_id=job["id"])}
    assert left == kept  # the shard that ran keeps its prototypes sold
    after = {m["name"]: m["free_virtual_identities"] for m in c.get("/v1/models", headers=h).json()}
    assert after["tiny"] == free["tiny"] - len(kept)
    # the quota is back: an order of the whole quota fits again
    with app.state.sessions() as db:
        from app.services.quota import images_used_this_month
        from jobstore.models import Team

        assert images_used_this_month(db, db.query(Team).filter_by(name="alpha").one()) == 0


def test_thirty_concurrent_submissions_against_room_for_ten(api):
    app, keys = api
    with app.state.sessions() as db:
        from sqlalchemy import update

        from jobstore.models import Team

        db.execute(update(Team).where(Team.name == "alpha").values(monthly_quota=30))
        db.commit()
    c = TestClient(app)
    order = {"identities": 1, "images_per_identity": 3, "steps": 1}  # 3 images of the 30

    def post(i):
        return c.post("/v1/jobs", json={**order, "seed": i}, headers={"X-API-Key": keys["alpha"]})

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(post, range(30)))
    codes = [r.status_code for r in answers]
    assert codes.count(202) == 10 and codes.count(429) == 20, [r.text for r in answers]
    assert all(r.json()["detail"][0]["field"] == "images" for r in answers if r.status_code == 429)


def test_two_teams_submitting_at_once_never_share_a_prototype(api):
    app, keys = api
    c = TestClient(app)
    order = {"identities": 1, "images_per_identity": 1, "steps": 1}  # 1 slot + 1 spare

    def post(i):
        team = ("alpha", "beta")[i % 2]
        return c.post("/v1/jobs", json={**order, "seed": i}, headers={"X-API-Key": keys[team]})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))  # 20 jobs x 2 = every one of the 40 prototypes
    assert all(r.status_code == 202 for r in answers), [r.text for r in answers]
    with app.state.sessions() as db:
        rows = db.query(LedgerEntry).all()
    assert len(rows) == 40
    assert len({(r.prototype_set, r.prototype_id) for r in rows}) == 40  # none sold twice
    r = post(0)  # and nothing is left
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "identities"


def test_a_submission_that_loses_every_allocation_race_gets_a_409_and_stores_nothing(
    api, monkeypatch
):
    """Past ALLOCATION_RETRIES lost races the request answers 409 (field "identities"), after
    exactly that many jittered waits, and leaves no job, shard or ledger row behind."""
    from types import SimpleNamespace

    from app.services import submission as job_service
    from jobstore.models import Job, Shard

    app, keys = api
    c = TestClient(app)
    first = c.post("/v1/jobs", json=ORDER, headers={"X-API-Key": keys["alpha"]})
    assert first.status_code == 202, first.text
    with app.state.sessions() as db:
        sold = sorted(r.prototype_id for r in db.query(LedgerEntry).all())
        counts = (db.query(Job).count(), db.query(Shard).count(), len(sold))

    real_free = job_service.free_prototype_ids
    attempts, waits = [], []

    def stale_view(db, desc):  # a contender committed one of these after the read
        attempts.append(1)
        return [sold[0], *real_free(db, desc)]

    monkeypatch.setattr(job_service, "free_prototype_ids", stale_view)
    monkeypatch.setattr(job_service, "ALLOCATION_RETRIES", 3)
    monkeypatch.setattr(job_service, "time", SimpleNamespace(sleep=waits.append))
    r = c.post("/v1/jobs", json={**ORDER, "seed": 1}, headers={"X-API-Key": keys["alpha"]})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == "identities" and "concurrently" in detail["message"]
    assert len(attempts) == 4 and len(waits) == 3  # first try + 3 retries, a wait before each
    assert all(0 <= w <= 0.005 * (i + 1) for i, w in enumerate(waits))
    with app.state.sessions() as db:
        after = sorted(r.prototype_id for r in db.query(LedgerEntry).all())
        assert (db.query(Job).count(), db.query(Shard).count(), len(after)) == counts
    assert after == sold

    monkeypatch.setattr(job_service, "free_prototype_ids", real_free)  # the race is over
    again = c.post("/v1/jobs", json={**ORDER, "seed": 1}, headers={"X-API-Key": keys["alpha"]})
    assert again.status_code == 202, again.text
