"""A shard's life in the database: claim, heartbeat, progress, give back, succeed or fail.

Every step is one short transaction in its own session, retried across a lost connection
(:func:`jobstore.session.retry_db`), so no worker holds a transaction open while it samples,
and a database restart or failover delays a shard without failing its job.

A claim is fenced: it records this worker and the shard's attempt number, and every later
write of the run is conditional on both still holding. A run whose lease was taken over (its
worker stalled past the lease, or a retry queued the shard again) cannot overwrite what the
new holder writes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobstore.ledger import release_unstarted, release_unused_spares
from jobstore.models import Job, JobStatus, Shard, ShardStatus, utcnow
from jobstore.session import retry_db
from jobstore.settings import Settings
from jobstore.webhooks import notify

log = logging.getLogger(__name__)


def worker_id() -> str:
    """This process (a Celery pool process forks after import: asked at each use)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Claim:
    """What a run needs of its shard and job, read once at the claim."""

    shard_id: int
    index: int
    job_id: str
    model: str
    spec: dict
    prototypes: list[int]
    slot_start: int
    slot_end: int
    attempt: int  # the fencing token: Shard.attempts as this claim set it

    @property
    def identities(self) -> int:
        return self.slot_end - self.slot_start

    @classmethod
    def of(cls, job: Job, shard: Shard) -> Claim:
        """The view of a shard row as its current claim would hold it."""
        return cls(
            shard.id,
            shard.index,
            job.id,
            job.model,
            dict(job.spec),
            list(shard.prototypes),
            shard.slot_start,
            shard.slot_end,
            shard.attempts,
        )


def announce(sessions: sessionmaker, settings: Settings, job_id: str) -> None:
    """The job reached a final state: its webhook goes into the outbox, and to a Celery
    worker where there is a broker."""
    from workers.celery_app import webhook_sender

    retry_db(lambda: notify(sessions, job_id, webhook_sender(settings)))


def held(claim: Claim):
    """The condition every write of a run is made under: the claim still holds."""
    return (
        (Shard.id == claim.shard_id)
        & (Shard.status == ShardStatus.RUNNING)
        & (Shard.attempts == claim.attempt)
        & (Shard.worker == worker_id())
    )


def fail_job(db: Session, job: Job, reason: str) -> None:
    """Mark ``job`` failed with ``reason`` and give back what it never used; caller commits."""
    job.status, job.error, job.finished_at = JobStatus.FAILED, reason, utcnow()
    release_unstarted(db, job)


def lost_starts(job: Job, shard: Shard) -> int:
    """How many times ``shard`` was started and did not finish, leaving out the times its
    worker gave it back on a clean stop (Ctrl-C, SIGTERM)."""
    given_back = (job.progress or {}).get("given_back", {}).get(str(shard.index), 0)
    return shard.attempts - 1 - given_back


def _claim(sessions: sessionmaker, settings: Settings, shard_id: int) -> Claim | str:
    with sessions() as db:
        shard = db.get(Shard, shard_id)
        if shard is None:
            return "missing"
        job = shard.job
        if job.status in (JobStatus.CANCELED, JobStatus.FAILED):
            if shard.status == ShardStatus.QUEUED:
                shard.status = ShardStatus.CANCELED
                db.commit()
            return ShardStatus.CANCELED
        now = utcnow()
        taken = db.execute(
            update(Shard)
            .where(
                Shard.id == shard_id,
                or_(
                    Shard.status == ShardStatus.QUEUED,
                    (Shard.status == ShardStatus.RUNNING) & (Shard.lease_expires_at < now),
                ),
            )
            .values(
                status=ShardStatus.RUNNING,
                worker=worker_id(),
                attempts=Shard.attempts + 1,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
            )
        ).rowcount
        if not taken:
            db.rollback()
            return "busy"
        db.refresh(shard)
        db.refresh(job)
        if lost_starts(job, shard) >= settings.max_step_attempts:
            shard.status = ShardStatus.FAILED
            fail_job(
                db,
                job,
                f"shard {shard.index}: started {shard.attempts} times without finishing (its "
                "worker died each time); the job stops here (POST /v1/jobs/{id}/retry)",
            )
            db.commit()
            return ShardStatus.FAILED
        if job.status == JobStatus.QUEUED:
            job.status, job.started_at = JobStatus.RUNNING, utcnow()
        db.commit()
        return Claim.of(job, shard)


def claim_shard(sessions: sessionmaker, settings: Settings, shard_id: int) -> Claim | str:
    """Take the lease of a queued (or expired) shard. A string says why not: ``missing``,
    ``canceled`` (its job ended), ``busy`` (someone else holds it) or ``failed`` (one start
    too many: the job failed with that reason)."""
    return retry_db(lambda: _claim(sessions, settings, shard_id))


def _write(sessions: sessionmaker, claim: Claim, **values) -> bool:
    with sessions() as db:
        n = db.execute(update(Shard).where(held(claim)).values(**values)).rowcount
        db.commit()
        return n == 1


def renew_lease(sessions: sessionmaker, settings: Settings, claim: Claim) -> None:
    """The heartbeat: a shard at work pushes its lease ``lease_seconds`` ahead (one try: the
    next beat tries again)."""
    _write(sessions, claim, lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))


def cancel_requested(sessions: sessionmaker, claim: Claim) -> bool:
    """Between sampling batches: was the job canceled? A database that does not answer is
    not a cancel (the next batch asks again)."""
    try:
        with sessions() as db:
            return bool(db.scalar(select(Job.cancel_requested).where(Job.id == claim.job_id)))
    except Exception:  # noqa: BLE001 - advisory read
        log.warning("could not read the cancel flag; asking again after the next batch")
        return False


def update_progress(sessions: sessionmaker, claim: Claim, change) -> None:
    """Apply ``change(progress_dict, job)`` to the job's progress. Progress is advisory: a
    write the database refuses is logged and skipped, never a reason to stop the shard."""
    try:
        with sessions() as db:
            job = db.get(Job, claim.job_id)
            prog = dict(job.progress or {})
            change(prog, job)
            prog["updated_at"] = utcnow().isoformat()
            job.progress = prog
            db.commit()
    except Exception:  # noqa: BLE001
        log.warning("progress update of job %s skipped", claim.job_id, exc_info=True)


def give_back(sessions: sessionmaker, claim: Claim) -> bool:
    """Return the shard to the queue (clean shutdown): lease cleared, queued again at once
    (``enqueued_at`` empty: the reconciler re-sends it on its next pass); the job counts the
    give-back, so it is not a lost start."""

    def write() -> bool:
        with sessions() as db:
            n = db.execute(
                update(Shard)
                .where(held(claim))
                .values(
                    status=ShardStatus.QUEUED, lease_expires_at=None, worker=None, enqueued_at=None
                )
            ).rowcount
            if n:
                job = db.get(Job, claim.job_id)
                progress = dict(job.progress or {})
                given = dict(progress.get("given_back", {}))
                given[str(claim.index)] = given.get(str(claim.index), 0) + 1
                job.progress = {**progress, "given_back": given}
            db.commit()
            return n == 1

    return retry_db(write)


def record_success(
    sessions: sessionmaker, claim: Claim, images: int, unused_spares: list[int], seconds: float
) -> bool | None:
    """The shard succeeded: its unused spares go back to the ledger in the same transaction.
    Returns whether every shard of the job has now succeeded (time to finalize), or None when
    the claim no longer held (another run took the shard over; it writes the outcome)."""

    def write() -> bool | None:
        with sessions() as db:
            done = db.execute(
                update(Shard)
                .where(held(claim))
                .values(status=ShardStatus.SUCCEEDED, images_done=images)
            ).rowcount
            if not done:
                db.rollback()
                return None
            job = db.get(Job, claim.job_id)
            back = release_unused_spares(db, job, unused_spares)
            prog = dict(job.progress or {})
            prog["shard_seconds"] = round(prog.get("shard_seconds", 0) + seconds, 2)
            prog["spares_released"] = prog.get("spares_released", 0) + back
            job.progress = prog
            pending = db.scalar(
                select(Shard.id).where(
                    Shard.job_id == claim.job_id, Shard.status != ShardStatus.SUCCEEDED
                )
            )
            db.commit()
            return pending is None

    return retry_db(write)


def record_end(sessions: sessionmaker, claim: Claim, status: str, reason: str = "") -> bool:
    """The shard ended ``canceled`` or ``failed`` (the job fails with ``reason``); False when
    the claim no longer held."""

    def write() -> bool:
        with sessions() as db:
            n = db.execute(update(Shard).where(held(claim)).values(status=status)).rowcount
            if n and status == ShardStatus.FAILED:
                job = db.get(Job, claim.job_id)
                if job.status not in (JobStatus.CANCELED, JobStatus.FAILED):
                    fail_job(db, job, reason)
            db.commit()
            return n == 1

    return retry_db(write)


class Throughput:
    """Images per second of this worker's current shard, for the job record."""

    def __init__(self):
        self.started, self.images = time.perf_counter(), 0

    def add(self, n: int) -> dict:
        import torch

        self.images += n
        rate = self.images / max(time.perf_counter() - self.started, 1e-6)
        stats = {
            "img_per_s": round(rate, 3),
            "device": "cpu",
            "gpu_mem_mb": 0.0,
            "updated_at": utcnow().isoformat(),
        }
        if torch.cuda.is_available():
            stats["device"] = torch.cuda.get_device_name()
            stats["gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return stats
