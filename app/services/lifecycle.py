"""A job's state changes after admission: cancel and retry, by its owner or an admin."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.services import cache
from app.services.errors import JobError
from app.services.models import describe_model
from app.services.quota import check_quota
from jobstore.ledger import allocate, free_prototype_ids, release_unstarted
from jobstore.models import TERMINAL, Job, JobStatus, LedgerEntry, Shard, ShardStatus, Team, utcnow
from jobstore.settings import Settings


def cancel_job(db: Session, job: Job) -> Job:
    """Idempotent: a finished job stays as it is; a queued or running one is canceled
    (running shards stop at their next sampling batch). What it gives back follows
    :mod:`jobstore.ledger`: its images to the quota, the prototypes of shards that never
    started."""
    if job.status in TERMINAL:
        return job
    job.cancel_requested = True
    job.status = JobStatus.CANCELED
    job.finished_at = utcnow()
    release_unstarted(db, job)
    db.commit()
    cache.statuses.clear()
    return job


def retry_job(db: Session, settings: Settings, job: Job, enqueue_shard, enqueue_finalize) -> Job:
    """Run a failed job again from where it stopped (its owner or an admin asks).

    Finished shards are kept (their chunks are in the store), failed ones run again with the
    prototypes they hold, and shards whose prototypes were released at the failure get fresh
    ones. The order counts against the owner's quota again. A job whose every shard finished
    (it failed while uploading the dataset) only finalizes again."""
    if job.status != JobStatus.FAILED:
        raise JobError(409, "status", f"only a failed job can be retried; this one is {job.status}")
    owner = db.scalar(select(Team).where(Team.id == job.team_id).with_for_update())
    check_quota(db, owner, job.images_requested)
    shards = list(db.scalars(select(Shard).where(Shard.job_id == job.id).order_by(Shard.index)))
    released = [s for s in shards if s.status == ShardStatus.CANCELED and s.attempts == 0]
    need = sum(len(s.prototypes) for s in released)
    reallocated: list[int] = []
    if need:
        desc = describe_model(settings, job.model)
        held = db.scalar(select(LedgerEntry.lineage).where(LedgerEntry.job_id == job.id).limit(1))
        if held is not None and held != desc.lineage:
            raise JobError(
                409, "model", f"model {job.model!r} holds other prototypes now; order again"
            )
        free = iter(free_prototype_ids(db, desc))
        for shard in released:
            fresh = [p for p, _ in zip(free, shard.prototypes, strict=False)]
            if len(fresh) < len(shard.prototypes):
                raise JobError(
                    409, "identities", f"model {job.model!r} has too few free virtual identities"
                )
            shard.prototypes = fresh
            reallocated += fresh
    now = utcnow()
    # a shard still at work under a live lease (its job failed beside it) goes on: queuing it
    # again would let a second worker draw it too; it records its own outcome
    live = {
        s.id
        for s in shards
        if s.status == ShardStatus.RUNNING and s.lease_expires_at and s.lease_expires_at > now
    }
    for shard in shards:
        if shard.status != ShardStatus.SUCCEEDED and shard.id not in live:
            shard.status, shard.lease_expires_at, shard.worker = ShardStatus.QUEUED, None, None
            shard.enqueued_at = now
    job.status = JobStatus.RUNNING if job.started_at else JobStatus.QUEUED
    job.error = job.finished_at = job.finalize_expires_at = None
    job.cancel_requested = False
    job.progress = {**(job.progress or {}), "retries": (job.progress or {}).get("retries", 0) + 1}
    try:
        if reallocated:
            allocate(db, desc, job.model, reallocated, job.id)
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise JobError(
            409, "identities", "virtual identities were allocated concurrently; retry"
        ) from exc
    cache.statuses.clear()
    pending = [s for s in shards if s.status == ShardStatus.QUEUED]
    for shard in pending:
        enqueue_shard(shard.id, job.priority)
    if not pending and not live:  # it failed while finalizing: only that step runs again
        enqueue_finalize(job.id)
    return job
