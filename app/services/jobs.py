"""Submitting, listing and cancelling jobs.

Submission is one transaction: validate, check the team's monthly quota, allocate the job's
own virtual prototypes in the identity ledger (a unique (model, prototype) constraint makes a
double sale impossible even under concurrent submissions), and create the shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
import uuid
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from app.schemas import MODEL_NAME_PATTERN, JobCreate, JobOut
from app.services import cache
from model_store import ModelNotFound, list_models
from model_store.description import ModelDescription, describe
from model_store.storage import open_store
from vigface.dataset.pose import PoseSpecError
from vigface.dataset.spec import DatasetSpec, with_model_defaults
from workers.db.models import (
    TERMINAL,
    Job,
    JobStatus,
    LedgerEntry,
    Shard,
    ShardStatus,
    Team,
    WebhookDelivery,
    utcnow,
)
from workers.ledger import release_unstarted
from workers.settings import Settings
from workers.webhooks import refused_address


class JobError(ValueError):
    """A request the service refuses; ``status`` is the HTTP code, ``field`` what is wrong."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def request_hash(model: str, spec: DatasetSpec, extra: dict) -> str:
    body = json.dumps({"model": model, "spec": spec.model_dump(), **extra}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def images_used_this_month(db: Session, team: Team) -> int:
    """Images this team's jobs of this month hold against its quota. A failed or canceled job
    delivers no dataset, so it holds none: its images go back to the quota."""
    q = select(func.coalesce(func.sum(Job.images_requested), 0)).where(
        Job.team_id == team.id,
        Job.created_at >= month_start(utcnow()),
        Job.status.not_in((JobStatus.FAILED, JobStatus.CANCELED)),
    )
    return int(db.scalar(q))


def free_prototypes(db: Session, desc: ModelDescription) -> int:
    """How many of a model's virtual prototypes no job holds. The ledger is keyed by the
    prototype set's digest, so every name, copy or re-push of the same W_V counts together."""
    used = db.scalar(select(func.count()).where(LedgerEntry.prototype_set == desc.prototype_set))
    return desc.virtual_prototypes - int(used)


def free_prototype_ids(db: Session, desc: ModelDescription) -> list[int]:
    taken = set(
        db.scalars(
            select(LedgerEntry.prototype_id).where(LedgerEntry.prototype_set == desc.prototype_set)
        )
    )
    return [p for p in range(desc.virtual_prototypes) if p not in taken]


def spares_for(settings: Settings, shard_sizes: list[int]) -> list[int]:
    """Spare prototypes per shard: ``spare_fraction`` of the shard's identities, at least one,
    so a 4-identity job reserves 1 spare, not a full shard's worth."""
    return [max(1, math.ceil(settings.spare_fraction * n)) for n in shard_sizes]


MODEL_NAME = re.compile(MODEL_NAME_PATTERN)  # also for the default model and the form


def describe_model(settings: Settings, name: str) -> ModelDescription:
    """The light description of a store entry named in a request (never a path)."""
    if not MODEL_NAME.fullmatch(name):
        raise JobError(
            422, "model", "a model is named by its store name: letters, digits, '.', '_', '-'"
        )
    try:
        return describe(
            name, settings.storage_url, settings.s3_endpoint_url, str(settings.model_cache)
        )
    except ModelNotFound as exc:
        available = ", ".join(e.name for e in list_models() if e.kind == "generator")
        raise JobError(
            422, "model", f"no model named {name!r} (available: {available or 'none'})"
        ) from exc


# concurrent submissions for one prototype set that a request outlasts before its 409
ALLOCATION_RETRIES = 32


def submit_job(
    db: Session,
    settings: Settings,
    team: Team,
    desc: ModelDescription,
    spec: DatasetSpec,
    priority: int = 5,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    evaluate_on: list[str] | None = None,
    _attempt: int = 0,
) -> tuple[Job, bool]:
    """Create a job (or return the one this idempotency key made). Returns (job, created).

    Two teams' submissions can pick the same free prototypes at once; the ledger's unique
    (prototype set, prototype) key lets one commit, and the other allocates again after a short
    jittered wait. Every round lets at least one contender commit, so the retry bound
    (``ALLOCATION_RETRIES``) must exceed the number of simultaneous submissions; past it, a 409."""
    if spec.identities > settings.max_identities_per_job:
        raise JobError(422, "identities", f"at most {settings.max_identities_per_job} per job")
    if spec.images_per_identity > settings.max_images_per_identity:
        raise JobError(422, "images_per_identity", f"at most {settings.max_images_per_identity}")
    if spec.mode != "virtual":
        raise JobError(422, "mode", "the service sells virtual identities only")
    if webhook_url and (why := refused_address(webhook_url, settings.webhook_allowed_hosts)):
        raise JobError(422, "webhook_url", why)
    model = desc.name
    extra = {"priority": priority, "webhook_url": webhook_url, "evaluate_on": evaluate_on or []}
    digest = request_hash(model, spec, extra)
    if idempotency_key:
        prior = db.scalar(
            select(Job).where(Job.team_id == team.id, Job.idempotency_key == idempotency_key)
        )
        if prior is not None:
            if prior.request_hash != digest:
                raise JobError(409, "Idempotency-Key", "this key was used with a different request")
            return prior, False
    images = spec.identities * spec.images_per_identity
    # lock the team row so concurrent submissions of one team see each other's usage
    db.scalar(select(Team).where(Team.id == team.id).with_for_update())
    used = images_used_this_month(db, team)
    if used + images > team.monthly_quota:
        raise JobError(
            429,
            "images",
            f"monthly quota exceeded: {used} of {team.monthly_quota} images used, "
            f"this job needs {images}",
        )
    n_shards = math.ceil(spec.identities / settings.shard_identities)
    bounds = [
        (i * settings.shard_identities, min(spec.identities, (i + 1) * settings.shard_identities))
        for i in range(n_shards)
    ]
    spares = spares_for(settings, [b - a for a, b in bounds])
    need = spec.identities + sum(spares)
    free = free_prototype_ids(db, desc)
    if len(free) < need:
        raise JobError(
            409,
            "identities",
            f"model {model!r} has {len(free)} free virtual identities; the job needs {need} "
            f"({spec.identities} identities + {sum(spares)} spares that replace identities the "
            "privacy filter drops)",
        )
    alloc = free[:need]
    job = Job(
        id=str(uuid.uuid4()),  # known before the insert: ledger and shards refer to it
        team_id=team.id,
        model=model,
        prototype_set=desc.prototype_set,
        spec=spec.model_dump(),
        priority=priority,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_hash=digest,
        images_requested=images,
        identities_allocated=need,
        evaluate_on=evaluate_on or None,
        progress={"sampled": 0, "identities_done": 0},
    )
    db.add(job)
    db.add_all(
        LedgerEntry(model=model, prototype_set=desc.prototype_set, prototype_id=p, job_id=job.id)
        for p in alloc
    )
    slots, spare_rows = alloc[: spec.identities], iter(alloc[spec.identities :])
    for i, ((a, b), k) in enumerate(zip(bounds, spares, strict=True)):
        own_spares = [next(spare_rows) for _ in range(k)]
        db.add(
            Shard(
                job_id=job.id,
                index=i,
                slot_start=a,
                slot_end=b,
                prototypes=slots[a:b] + own_spares,
                enqueued_at=utcnow(),  # sent right after the commit (by the caller)
            )
        )
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        if idempotency_key:  # the same key won a race with this request: answer with its job
            prior = db.scalar(
                select(Job).where(Job.team_id == team.id, Job.idempotency_key == idempotency_key)
            )
            if prior is not None:
                if prior.request_hash != digest:
                    raise JobError(
                        409, "Idempotency-Key", "this key was used with a different request"
                    ) from exc
                return prior, False
        # another submission took one of these prototypes first: allocate again
        if _attempt < ALLOCATION_RETRIES:
            time.sleep(random.uniform(0, 0.005 * (_attempt + 1)))  # de-synchronise contenders
            return submit_job(
                db,
                settings,
                team,
                desc,
                spec,
                priority,
                webhook_url,
                idempotency_key,
                evaluate_on,
                _attempt=_attempt + 1,
            )
        raise JobError(
            409, "identities", "virtual identities were allocated concurrently; retry"
        ) from exc
    return job, True


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


def cancel_job(db: Session, job: Job) -> Job:
    """Idempotent: a finished job stays as it is; a queued or running one is canceled
    (running shards stop at their next sampling batch). What it gives back follows
    :mod:`workers.ledger`: its images to the quota, the prototypes of shards that never
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
    used = images_used_this_month(db, owner)
    if used + job.images_requested > owner.monthly_quota:
        raise JobError(
            429,
            "images",
            f"monthly quota exceeded: {used} of {owner.monthly_quota} images used, "
            f"this job needs {job.images_requested}",
        )
    shards = list(db.scalars(select(Shard).where(Shard.job_id == job.id).order_by(Shard.index)))
    released = [s for s in shards if s.status == ShardStatus.CANCELED and s.attempts == 0]
    need = sum(len(s.prototypes) for s in released)
    if need:
        desc = describe_model(settings, job.model)
        if desc.prototype_set != job.prototype_set:
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
            db.add_all(
                LedgerEntry(
                    model=job.model, prototype_set=job.prototype_set, prototype_id=p, job_id=job.id
                )
                for p in fresh
            )
    for shard in shards:
        if shard.status != ShardStatus.SUCCEEDED:
            shard.status, shard.lease_expires_at, shard.worker = ShardStatus.QUEUED, None, None
            shard.enqueued_at = utcnow()
    job.status = JobStatus.RUNNING if job.started_at else JobStatus.QUEUED
    job.error = job.finished_at = job.finalize_expires_at = None
    job.cancel_requested = False
    job.progress = {**(job.progress or {}), "retries": (job.progress or {}).get("retries", 0) + 1}
    try:
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
    if not pending:  # it failed while finalizing: only that step runs again
        enqueue_finalize(job.id)
    return job


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
            eta = round(max(0, job.images_requested - job.images_done) / rate, 1)
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


def benchmark_key(name: str) -> str:
    return f"benchmarks/{name}.bin"


def check_benchmarks(settings: Settings, names: list[str], spec: DatasetSpec) -> None:
    """Every benchmark a job asks for is registered, and the probe has images to train on."""
    if not names:
        return
    if "imagefolder" not in spec.formats:
        raise JobError(422, "evaluate_on", "the utility probe trains on the imagefolder format")
    store = open_store(settings.storage_url, settings.s3_endpoint_url)
    missing = [n for n in names if not store.exists(benchmark_key(n))]
    if missing:
        raise JobError(
            422,
            "evaluate_on",
            f"no benchmark named {', '.join(missing)} (an admin registers one with "
            "`vigface admin add-benchmark NAME FILE`)",
        )


def create_job(
    db: Session,
    settings: Settings,
    team: Team,
    body: JobCreate,
    idempotency_key: str | None,
    enqueue,
) -> tuple[Job, bool]:
    """The one code path that creates jobs (REST API and dashboard form)."""
    model = body.model or settings.default_model
    fields = body.model_dump(exclude={"model", "priority", "webhook_url", "evaluate_on"})
    try:
        spec = DatasetSpec(**fields, batch_size=settings.sampler_batch_size)
    except ValidationError as exc:
        raise JobError(
            422, ".".join(map(str, exc.errors()[0]["loc"])), exc.errors()[0]["msg"]
        ) from exc
    desc = describe_model(settings, model)
    if desc.pose_bank is None:
        raise JobError(422, "model", f"model {model!r} is not a generator")
    spec = with_model_defaults(spec, desc.card)  # the job records the values it runs with
    if spec.upsample and desc.upsampler_size is None:
        raise JobError(422, "upsample", f"model {model!r} has no upsampler; order without it")
    try:
        desc.pose_bank.weights(spec.pose)
    except PoseSpecError as exc:
        raise JobError(422, "pose", str(exc)) from exc
    check_benchmarks(settings, body.evaluate_on, spec)
    job, created = submit_job(
        db,
        settings,
        team,
        desc,
        spec,
        body.priority,
        body.webhook_url,
        idempotency_key,
        body.evaluate_on,
    )
    if created:
        enqueue(job)
        cache.statuses.clear()  # the team's listings change
    return job, created
