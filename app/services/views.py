"""Read models: what the API and the dashboard show of jobs (records, rates, ETAs, webhook
state), each listing in a fixed number of queries whatever the jobs' sizes."""

from __future__ import annotations

from datetime import datetime

from fastapi import HTTPException
from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from app.schemas import JobOut
from jobstore.models import Job, JobStatus, Shard, ShardStatus, Team, WebhookDelivery, utcnow


def visible_job(db: Session, team: Team, job_id: str) -> Job | None:
    """The job if this team may see it (admins see all); None otherwise (a 404, not a 403)."""
    job = db.get(Job, job_id)
    if job is None or (job.team_id != team.id and not team.is_admin):
        return None
    return job


def visible_jobs(team: Team, status: str | None = None):
    """Query of the jobs this team may list (admins: all), newest first."""
    q = select(Job)
    if not team.is_admin:
        q = q.where(Job.team_id == team.id)
    if status:
        q = q.where(Job.status == status)
    return q.order_by(Job.created_at.desc(), Job.id.desc())


def job_out(job: Job) -> JobOut:
    """The API's record of one job."""
    return job_outs(object_session(job), [job])[0]


def job_outs(db: Session, jobs: list[Job]) -> list[JobOut]:
    """API records of several jobs in a fixed number of queries, whatever the jobs' sizes:
    shard states come as counts from one GROUP BY, never as loaded shard rows."""
    ids = [j.id for j in jobs]
    shards: dict[str, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = db.execute(
            select(Shard.job_id, Shard.status, func.count())
            .where(Shard.job_id.in_(ids))
            .group_by(Shard.job_id, Shard.status)
        )
        for job_id, status, n in rows:
            shards[job_id][str(status)] = n
    hooks = webhook_states(db, [j.id for j in jobs if j.webhook_url])
    # the team row is usually in the session already (the caller's, loaded with its key)
    teams = {j.team_id: t.name for j in jobs if (t := db.get(Team, j.team_id)) is not None}
    out = []
    for job in jobs:
        rate, updated = sampling_rate(job)
        eta = None
        if job.status == JobStatus.RUNNING and rate:
            left = max(0, job.images_requested - job.images_done) / rate
            eta = round(left + finalize_seconds(db, job.model, job.images_requested), 1)
        elif job.status == JobStatus.QUEUED:
            eta = (job.progress or {}).get("eta_at_submission_s")
        out.append(
            JobOut(
                id=job.id,
                status=job.status,
                model=job.model,
                team=teams[job.team_id],
                spec=job.spec,
                priority=job.priority,
                images_requested=job.images_requested,
                images_done=job.images_done,
                progress=job.progress or {},
                shards=shards[job.id],
                identities_allocated=job.identities_allocated,
                evaluate_on=job.evaluate_on or [],
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                eta_seconds=eta,
                sampling_img_per_s=rate,
                progress_updated_at=updated,
                error=job.error,
                warnings=(job.progress or {}).get("warnings", []),
                webhook=hooks.get(job.id),
            )
        )
    return out


def sampling_rate(job: Job, stale_s: float = 120.0):
    """(images/s the job's workers sample now, when progress last moved): the sum over workers
    that reported within ``stale_s``. A steady rate for the ETA, unlike images done over time
    since start, which also counts queueing, model loading and filtering."""
    progress = job.progress or {}
    updated = progress.get("updated_at")
    updated = datetime.fromisoformat(updated) if updated else None
    if job.status != JobStatus.RUNNING:
        return None, updated
    now = utcnow()
    rate = sum(
        w.get("img_per_s", 0.0)
        for w in progress.get("workers", {}).values()
        if "updated_at" in w
        and (now - datetime.fromisoformat(w["updated_at"])).total_seconds() < stale_s
    )
    return (round(rate, 3) if rate else None), updated


def webhook_states(db: Session, job_ids: list[str]) -> dict[str, dict]:
    """The latest outbox row of each job, as the job record shows it."""
    if not job_ids:
        return {}
    rows = db.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id.in_(job_ids))
        .order_by(WebhookDelivery.id)
    )
    return {
        d.job_id: {"status": d.status, "attempts": d.attempts, "last_error": d.last_error}
        for d in rows
    }


def measured_img_per_s(db: Session, model: str, jobs: int = 20) -> float | None:
    """Images per second one worker delivers for ``model``: the images of finished shards over
    their seconds (sampling, filtering, writing), over the model's ``jobs`` latest jobs that
    have run; None before any shard of this model has finished. Two small queries, whatever
    the history: it runs on every submission."""
    recent = dict(
        db.execute(
            select(Job.id, Job.progress)
            .where(
                Job.model == model,
                Job.status.in_((JobStatus.RUNNING, JobStatus.FINALIZING, JobStatus.SUCCEEDED)),
            )
            .order_by(Job.created_at.desc())
            .limit(jobs)
        ).all()
    )
    if not recent:
        return None
    done = db.execute(
        select(Shard.job_id, func.sum(Shard.images_done))
        .where(Shard.job_id.in_(list(recent)), Shard.status == ShardStatus.SUCCEEDED)
        .group_by(Shard.job_id)
    )
    images = seconds = 0.0
    for job_id, n in done:
        if (s := (recent[job_id] or {}).get("shard_seconds")) and n:
            images, seconds = images + n, seconds + s
    return images / seconds if seconds > 0 else None


def order_eta_seconds(
    db: Session, model: str, images: int, card_rate: float | None = None
) -> float | None:
    """Seconds until an order of ``images`` placed now is done, on one worker at the measured
    rate (before any job of the model finished: ``card_rate``, the rate its calibration drew
    at). Ahead of it: every shard at work now runs to its end (shards are not pre-empted), and
    queued shards of live jobs interleave with this order's
    (:func:`workers.reconcile.next_queued_shard`), so each other live job takes at most as many
    images as it does. The finalize step of the model's recent jobs is added per image."""
    rate = measured_img_per_s(db, model) or card_rate
    if not rate:
        return None
    per_shard = dict(
        db.execute(
            select(Shard.job_id, func.count()).where(Shard.status == ShardStatus.RUNNING)
            .group_by(Shard.job_id)
        ).all()
    )  # fmt: skip
    ahead = 0.0
    live = db.execute(
        select(Job.id, Job.images_requested, Job.images_done, func.count(Shard.id))
        .join(Shard, Shard.job_id == Job.id)
        .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .group_by(Job.id, Job.images_requested, Job.images_done)
    )
    for job_id, want, done, shards in live:
        left = max(0, want - done)
        running = min(left, per_shard.get(job_id, 0) * want / max(shards, 1))
        ahead += running + min(left - running, images)
    return round((images + ahead) / rate + finalize_seconds(db, model, images), 1)


def finalize_seconds(db: Session, model: str, images: int, jobs: int = 10) -> float:
    """The finalize step's measured seconds per image over the model's recent jobs, times
    ``images`` (0 before any finished)."""
    rows = db.execute(
        select(Job.images_requested, Job.progress)
        .where(Job.model == model, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.created_at.desc())
        .limit(jobs)
    ).all()
    timed = [(n, p["finalize_seconds"]) for n, p in rows if p and p.get("finalize_seconds")]
    if not timed:
        return 0.0
    return images * sum(s for _, s in timed) / max(sum(n for n, _ in timed), 1)


def job_or_404(db: Session, team: Team, job_id: str) -> Job:
    """The job if this team may see it; otherwise 404 (never 403: ids of others stay hidden)."""
    job = visible_job(db, team, job_id)
    if job is None:
        raise HTTPException(404, detail=[{"field": "job_id", "message": "no such job"}])
    return job
