"""Admission: what a job order must pass before it is queued, in one transaction.

Validate the order against the model (its sampler defaults, calibrated guidance, pose bank,
upsampler), check the team's monthly quota, estimate its time and hold very large orders for an
explicit confirmation, allocate its own virtual prototypes in the identity ledger
(:mod:`jobstore.ledger`: each prototype's own key is unique, which makes a double sale
impossible even under concurrent submissions) and create the shards. Cancel and retry change a job's
state the same way, so they live here too; read models are in :mod:`app.services.views`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.schemas import JobCreate
from app.services import cache
from app.services.errors import JobError
from app.services.models import describe_model
from app.services.views import order_eta_seconds
from jobstore.ledger import allocate, free_prototype_ids, release_unstarted
from jobstore.models import (
    TERMINAL,
    Job,
    JobStatus,
    LedgerEntry,
    Shard,
    ShardStatus,
    Team,
    utcnow,
)
from jobstore.settings import Settings
from jobstore.webhooks import refused_address
from model_store.description import ModelDescription
from model_store.storage import open_store
from vigface.pose import PoseSpecError
from vigface.dataset.spares import drop_probability, spares_for_order
from vigface.dataset.spec import (
    DatasetSpec,
    FiltersNotCalibrated,
    GuidanceNotCalibrated,
    PoseGuidanceUnsupported,
    ResolvedSpec,
    at_card_thresholds,
    resolve_spec,
)


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


def spares_for(
    settings: Settings, card: dict, spec: ResolvedSpec, shard_sizes: list[int], measured: bool
) -> list[int]:
    """Spare prototypes per shard: ``spare_fraction`` of the shard's identities (at least one,
    so a 4-identity job reserves 1, not a full shard's worth), or more where the model's
    measured drop rate applies (``measured``: the order runs the card's thresholds) and says
    the shard would run out more often than ``1 - spare_confidence``
    (:mod:`vigface.dataset.spares`). Shards share a size but the last: one computation each.
    Unused spares go back when the shard succeeds."""
    by_size = {
        n: spares_for_order(
            card,
            n,
            spec.images_per_identity,
            settings.spare_fraction,
            settings.spare_confidence,
            own_thresholds=not measured,
        )
        for n in set(shard_sizes)
    }
    return [by_size[n] for n in shard_sizes]


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
    eta_s: float | None = None,
    _attempt: int = 0,
) -> tuple[Job, bool]:
    """Create a job (or return the one this idempotency key made). Returns (job, created).

    Two teams' submissions can pick the same free prototypes at once; the ledger's unique
    per-prototype key lets one commit, and the other allocates again after a short
    jittered wait. Every round lets at least one contender commit, so the retry bound
    (``ALLOCATION_RETRIES``) must exceed the number of simultaneous submissions; past it, a 409."""
    if spec.identities > settings.max_identities_per_job:
        raise JobError(
            422, "identities", f"at most {settings.max_identities_per_job} (this service's bound)"
        )
    if spec.images_per_identity > settings.max_images_per_identity:
        raise JobError(
            422,
            "images_per_identity",
            f"at most {settings.max_images_per_identity} (this service's bound)",
        )
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
    rate = (desc.card.get("filters") or {}).get("drop_rate")
    measured = bool(rate) and at_card_thresholds(spec, desc.card)
    spares = spares_for(settings, desc.card, spec, [b - a for a, b in bounds], measured)
    need = spec.identities + sum(spares)
    free = free_prototype_ids(db, desc)
    if len(free) < need:
        why = ""
        if measured:
            q = drop_probability(rate["per_image_failure"], spec.images_per_identity)
            why = (
                f"; at {spec.images_per_identity} images per identity the filters drop "
                f"{q:.1%} of this model's identities (its card's measured drop rate)"
            )
        raise JobError(
            409,
            "identities",
            f"model {model!r} has {len(free)} free virtual identities; the job needs {need} "
            f"({spec.identities} identities + {sum(spares)} spares that replace identities the "
            f"privacy filter drops{why})",
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
        progress={"sampled": 0, "identities_done": 0, "eta_at_submission_s": eta_s},
    )
    db.add(job)
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
    try:  # one transaction: the job, its shards and its ledger rows, or none of them
        allocate(db, desc, model, alloc, job.id)
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
                eta_s,
                _attempt=_attempt + 1,
            )
        raise JobError(
            409, "identities", "virtual identities were allocated concurrently; retry"
        ) from exc
    return job, True


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
    for shard in shards:
        if shard.status != ShardStatus.SUCCEEDED:
            shard.status, shard.lease_expires_at, shard.worker = ShardStatus.QUEUED, None, None
            shard.enqueued_at = utcnow()
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
    if not pending:  # it failed while finalizing: only that step runs again
        enqueue_finalize(job.id)
    return job


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
    fields = body.model_dump(
        exclude={"model", "priority", "webhook_url", "evaluate_on", "confirm_large"}
    )
    try:
        spec = DatasetSpec(**fields, batch_size=settings.sampler_batch_size)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobError(422, ".".join(map(str, first["loc"])), first["msg"]) from exc
    desc = describe_model(settings, model)
    if desc.pose_bank is None:
        raise JobError(422, "model", f"model {model!r} is not a generator")
    try:  # the one place an order meets the card: the job records what it runs with
        spec = resolve_spec(spec, desc.card)
    except GuidanceNotCalibrated as exc:
        raise JobError(422, "guidance", str(exc)) from exc
    except PoseGuidanceUnsupported as exc:
        raise JobError(422, "pose_guidance", str(exc)) from exc
    except FiltersNotCalibrated as exc:
        raise JobError(422, str(exc).split(":")[0], str(exc)) from exc
    if spec.upsample and desc.upsampler_size is None:
        raise JobError(422, "upsample", f"model {model!r} has no upsampler; order without it")
    try:
        desc.pose_bank.weights(spec.pose)
    except PoseSpecError as exc:
        raise JobError(422, "pose", str(exc)) from exc
    check_benchmarks(settings, body.evaluate_on, spec)
    eta = order_eta_seconds(db, model, spec.identities * spec.images_per_identity)
    if not body.confirm_large:
        check_size(settings, spec, eta)
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
        eta,
    )
    if created:
        enqueue(job)
        cache.statuses.clear()  # the team's listings change
    return job, created


def check_size(settings: Settings, spec: DatasetSpec, eta_s: float | None) -> None:
    """An order above ``confirm_above_images`` images, or estimated to take longer than
    ``confirm_above_eta_hours`` on the workers, needs ``confirm_large: true``: a typo of one
    digit must not queue three days of work."""
    images = spec.identities * spec.images_per_identity
    hours = eta_s / 3600 if eta_s is not None else None
    too_big = images > settings.confirm_above_images
    too_long = hours is not None and hours > settings.confirm_above_eta_hours
    if too_big or too_long:
        took = f", about {hours:.1f} h at the workers' measured rate" if hours else ""
        raise JobError(
            422,
            "confirm_large",
            f"this order is {images} images{took} (orders above "
            f"{settings.confirm_above_images} images or {settings.confirm_above_eta_hours:g} h "
            "need confirmation); send confirm_large: true to place it",
        )
