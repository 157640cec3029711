"""The reconciler's queries: what must run, decided from the database alone.

Nothing here imports torch or loads a model, so the API process (which runs the reaper beside
a broker) stays light; ``workers.runner`` executes what these functions find.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobstore.models import LIVE, Job, JobStatus, Shard, ShardStatus, utcnow
from jobstore.settings import Settings


def requeue_expired(sessions: sessionmaker, enqueue_shard) -> list[int]:
    """The reaper: running shards whose lease expired (their worker died or hangs) go back to
    the queue. The lease claim in :func:`claim_shard` keeps a late original from double work."""
    now = utcnow()
    with sessions() as db:
        ids = list(
            db.scalars(
                select(Shard.id)
                .join(Job)
                .where(
                    Job.status.in_(LIVE),
                    Shard.status == ShardStatus.RUNNING,
                    Shard.lease_expires_at < now,
                )
            )
        )
        for shard_id in ids:
            db.execute(
                update(Shard)
                .where(
                    Shard.id == shard_id,
                    Shard.status == ShardStatus.RUNNING,
                    Shard.lease_expires_at < now,
                )
                .values(status=ShardStatus.QUEUED)
            )
        db.commit()
    for shard_id in ids:
        enqueue_shard(shard_id)
    return ids


def resend_queued(sessions: sessionmaker, settings: Settings, enqueue_shard) -> list[int]:
    """The reconciler: the database, not the broker, says what must run. A shard still queued
    ``resend_after_seconds`` after it was last sent (a broker restarted without persistence
    lost its message) is sent again; a duplicate message is harmless, since only one worker
    can claim the shard (:func:`claim_shard`)."""
    cutoff = utcnow() - timedelta(seconds=settings.resend_after_seconds)
    with sessions() as db:
        ids = list(
            db.scalars(
                select(Shard.id)
                .join(Job)
                .where(
                    Job.status.in_(LIVE),
                    Shard.status == ShardStatus.QUEUED,
                    or_(Shard.enqueued_at.is_(None), Shard.enqueued_at < cutoff),
                )
            )
        )
        if ids:
            db.execute(update(Shard).where(Shard.id.in_(ids)).values(enqueued_at=utcnow()))
            db.commit()
    for shard_id in ids:
        enqueue_shard(shard_id)
    return ids


def stalled_finalizes(sessions: sessionmaker) -> list[str]:
    """Jobs whose finalize step must run (again): every shard succeeded but the job is still
    ``running`` (the last shard's worker died before finalizing), or the job is
    ``finalizing`` with an expired lease (the finalizing worker died). Such jobs are put back
    to ``running`` so that :func:`finalize_job` can claim them."""
    now = utcnow()
    with sessions() as db:
        unfinished = select(Shard.job_id).where(Shard.status != ShardStatus.SUCCEEDED)
        done = list(
            db.scalars(
                select(Job.id).where(Job.status == JobStatus.RUNNING, Job.id.not_in(unfinished))
            )
        )
        expired = list(
            db.scalars(
                select(Job.id).where(
                    Job.status == JobStatus.FINALIZING, Job.finalize_expires_at < now
                )
            )
        )
        for job_id in expired:
            db.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.FINALIZING,
                    Job.finalize_expires_at < now,
                )
                .values(status=JobStatus.RUNNING)
            )
        db.commit()
    return done + expired


def next_queued_shard(db: Session, exclude: set[int] | frozenset = frozenset()) -> int | None:
    """The shard that runs next: a queued shard of a live job (or a running one whose lease
    expired), by priority, then **interleaved across jobs**: the lowest shard index first, so
    every job's first shard goes before any job's second. A 2 x 2 order placed behind a
    500 x 20 one runs within one shard-time, not after the whole big order; then by age."""
    now = utcnow()
    q = (
        select(Shard.id)
        .join(Job)
        .where(
            Job.status.in_(LIVE),
            or_(
                Shard.status == ShardStatus.QUEUED,
                (Shard.status == ShardStatus.RUNNING) & (Shard.lease_expires_at < now),
            ),
        )
        .order_by(Job.priority.desc(), Shard.index, Job.created_at, Shard.id)
        .limit(1)
    )
    if exclude:  # shards this worker just lost a claim race for
        q = q.where(Shard.id.not_in(exclude))
    return db.scalar(q)
