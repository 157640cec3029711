"""The database, not the broker, decides what runs: lost shard messages are re-sent, and a
finalize step whose worker died is run again, ending with exactly the order."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.schemas import JobCreate
from app.services.admission import create_job
from app.services.auth import create_team
from jobstore.models import Job, JobStatus, Shard, utcnow
from jobstore.session import init_db, session_factory
from jobstore.settings import Settings
from model_store.description import describe
from model_store.loader import load_generator
from workers import runner
from workers.reaper import Reaper


@pytest.fixture
def env(tiny_generator, tmp_path, monkeypatch):
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    describe.cache_clear()
    settings = Settings(
        home=tmp_path,
        default_model=tiny_generator.name,
        shard_identities=2,
        sampler_batch_size=4,
        resend_after_seconds=60,
        lease_seconds=60,
    )
    init_db(settings.database_url)
    sessions = session_factory(settings.database_url)
    with sessions() as db:
        team = create_team(db, "alpha", quota=1000)
        sent = []
        order = JobCreate(
            identities=3, images_per_identity=2, steps=1, tau_consistency=-1, tau_leak=1
        )
        job, _ = create_job(db, settings, team, order, None, lambda j: sent.extend(j.shards))
        job_id = job.id
    return sessions, settings, job_id


def _age_messages(sessions, seconds):
    with sessions() as db:
        db.execute(update(Shard).values(enqueued_at=utcnow() - timedelta(seconds=seconds)))
        db.commit()


def test_queued_shards_whose_messages_were_lost_are_sent_again_once(env):
    sessions, settings, job_id = env
    sent = []
    reaper = Reaper(sessions, settings, lambda sid, *a: sent.append(sid), lambda j: None)
    reaper.run_once()
    assert sent == []  # just sent with the order: not yet suspicious
    _age_messages(sessions, 120)  # the broker restarted and lost them
    reaper.run_once()
    assert len(sent) == 2  # both shards of the job
    reaper.run_once()
    assert len(sent) == 2  # re-sent once, not every pass


def _run_all_shards(sessions, settings, job_id):
    with sessions() as db:
        ids = [s.id for s in db.get(Job, job_id).shards]
    for sid in ids:
        runner.run_shard(sessions, settings, sid)


def _assert_exact_order(sessions, job_id):
    with sessions() as db:
        job = db.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.report["dataset"]["num_image"] == 3 * 2
        assert job.report["dataset"]["num_classes"] == 3
        images = [k for k in job.artifacts["keys"] if "/imagefolder/" in k]
        assert len(images) == len(set(images)) == 6


def test_a_finalize_whose_worker_died_is_run_again(env, monkeypatch):
    sessions, settings, job_id = env

    def dies_after_claiming(sessions, settings, job_id):  # SIGKILL right after the claim
        with sessions() as db:
            db.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.FINALIZING, finalize_expires_at=utcnow())
            )
            db.commit()

    monkeypatch.setattr(runner, "finalize_job", dies_after_claiming)
    _run_all_shards(sessions, settings, job_id)
    monkeypatch.undo()
    with sessions() as db:
        assert db.get(Job, job_id).status == JobStatus.FINALIZING  # stuck, as it would be
    dispatched = []
    Reaper(sessions, settings, lambda *a: None, dispatched.append).run_once()
    assert dispatched == [job_id]
    runner.finalize_job(sessions, settings, job_id)  # what the dispatched task runs
    _assert_exact_order(sessions, job_id)


def test_a_job_whose_last_worker_died_before_finalizing_is_finalized(env, monkeypatch):
    sessions, settings, job_id = env
    monkeypatch.setattr(runner, "finalize_job", lambda *a: None)  # died before finalize
    _run_all_shards(sessions, settings, job_id)
    monkeypatch.undo()
    with sessions() as db:
        assert db.get(Job, job_id).status == JobStatus.RUNNING
    from workers.embedded import EmbeddedWorker

    EmbeddedWorker(sessions, settings).run_once()  # embedded mode: the worker thread does it
    _assert_exact_order(sessions, job_id)
