"""Status polling reads indexes, never whole tables: EXPLAIN on PostgreSQL for the queries
behind GET /v1/jobs/{id} and GET /v1/jobs (sequential scans disabled, so a plan that can only
scan means an index is missing)."""

import pytest
from sqlalchemy import func, select, text
from test_service_api import _postgres_url

from app.services.jobs import visible_jobs
from workers.db.models import Job, Shard, Team


@pytest.fixture
def pg():
    from workers.db.session import get_engine, init_db, session_factory

    url = _postgres_url()
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
