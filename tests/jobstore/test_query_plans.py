"""Status polling reads indexes, never whole tables: EXPLAIN on PostgreSQL for the queries
behind GET /v1/jobs/{id} and GET /v1/jobs (sequential scans disabled, so a plan that can only
scan means an index is missing)."""

import pytest
from sqlalchemy import func, select, text

from app.services.views import visible_jobs
from conftest import postgres_url
from jobstore.models import Job, Shard, Team


@pytest.fixture
def pg():
    from jobstore.session import get_engine, init_db, session_factory

    url = postgres_url()
    get_engine.cache_clear()
    init_db(url)
    yield session_factory(url)
    get_engine.cache_clear()


def _plan(db, stmt) -> str:
    sql = stmt.compile(dialect=db.bind.dialect, compile_kwargs={"literal_binds": True})
    db.execute(text("SET enable_seqscan = off"))
    return "\n".join(r[0] for r in db.execute(text(f"EXPLAIN {sql}")))


def test_polling_queries_use_indexes(pg):
    with pg() as db:
        team = Team(name="alpha", monthly_quota=10)
        db.add(team)
        db.flush()
        job = Job(team_id=team.id, model="m", spec={}, images_requested=4)
        db.add(job)
        db.flush()
        db.add_all(
            Shard(job_id=job.id, index=i, slot_start=i, slot_end=i + 1, prototypes=[i])
            for i in range(50)
        )
        db.commit()
        shard_counts = (
            select(Shard.job_id, Shard.status, func.count())
            .where(Shard.job_id.in_([job.id]))
            .group_by(Shard.job_id, Shard.status)
        )
        assert "ix_shards_job_id" in _plan(db, shard_counts)
        assert "jobs_pkey" in _plan(db, select(Job).where(Job.id == job.id))
        listing = visible_jobs(team).limit(21)
        assert "ix_jobs_team_created" in _plan(db, listing)


def test_a_status_call_costs_three_statements_whatever_the_jobs_size(tmp_path):
    """Uncached: key + team (one join), the job, its shard counts: 3 statements for a 1-shard
    job and for a 60-shard one (a webhook adds its outbox row). Cached (the default), a repeated
    poll within the TTL costs none."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from app.main import create_app
    from app.services.auth import create_key, create_team
    from jobstore.session import get_engine
    from jobstore.settings import Settings

    url = postgres_url()
    get_engine.cache_clear()
    app = create_app(
        Settings(home=tmp_path, database_url=url, auth_cache_seconds=0, status_cache_seconds=0)
    )
    with app.state.sessions() as db:
        team = create_team(db, "alpha", quota=10)
        key = create_key(db, "alpha")
        jobs = []
        for n in (1, 60):
            job = Job(team_id=team.id, model="m", spec={}, images_requested=4)
            db.add(job)
            db.flush()
            db.add_all(
                Shard(job_id=job.id, index=i, slot_start=i, slot_end=i + 1, prototypes=[i])
                for i in range(n)
            )
            jobs.append(job.id)
        db.commit()
    statements = []
    engine = get_engine(url)
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    c = TestClient(app)
    try:
        for job_id in jobs:
            statements.clear()
            r = c.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key})
            assert r.status_code == 200
            data = [s for s in statements if s.strip().upper().startswith("SELECT")]
            # pre-ping aside
            assert len(data) - data.count("SELECT 1") == 3, "\n\n".join(statements)
        from app.services import cache

        cache.configure(auth_seconds=2, status_seconds=1)
        c.get(f"/v1/jobs/{jobs[1]}", headers={"X-API-Key": key})
        statements.clear()
        assert c.get(f"/v1/jobs/{jobs[1]}", headers={"X-API-Key": key}).status_code == 200
        assert statements == []
    finally:
        event.remove(engine, "before_cursor_execute", listener)
        get_engine.cache_clear()
