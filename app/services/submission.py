"""Placing an admitted order: plan its shards and spares, then write the job, its shards and
its ledger rows in one transaction.

The ledger (:mod:`jobstore.ledger`) keys each prototype uniquely, which makes a double sale
impossible even under concurrent submissions: two teams' submissions can pick the same free
prototypes at once, one commits, and the other plans again after a short jittered wait.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.services.errors import JobError
from app.services.quota import check_quota
from jobstore.ledger import allocate, free_prototype_ids
from jobstore.models import Job, Shard, Team, utcnow
from jobstore.settings import Settings
from model_store.description import ModelDescription
from vigface.dataset.spares import drop_probability, order_failure, spares_for_order
from vigface.dataset.spec import ResolvedSpec, at_card_thresholds
from vigface.pose import group_shares

# concurrent submissions for one prototype set that a request outlasts before its 409; every
# round lets at least one contender commit, so this must exceed the simultaneous submissions
ALLOCATION_RETRIES = 32


@dataclass
class Order:
    """What admission accepted, and the request fields that make two submissions the same."""

    desc: ModelDescription
    spec: ResolvedSpec
    priority: int = 5
    webhook_url: str | None = None
    evaluate_on: list[str] | None = None
    eta_s: float | None = None
    warnings: list[str] = field(default_factory=list)  # what the order will not get as asked

    @property
    def images(self) -> int:
        return self.spec.identities * self.spec.images_per_identity

    def request_hash(self) -> str:
        extra = {
            "priority": self.priority,
            "webhook_url": self.webhook_url,
            "evaluate_on": self.evaluate_on or [],
        }
        body = json.dumps(
            {"model": self.desc.name, "spec": self.spec.model_dump(), **extra}, sort_keys=True
        )
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class ShardPlan:
    """Slot ranges of the order's identities per shard and the spares each reserves."""

    bounds: list[tuple[int, int]]
    spares: list[int]
    measured: bool  # the spares follow the card's measured drop rate

    @property
    def prototypes_needed(self) -> int:
        return self.bounds[-1][1] + sum(self.spares)


def spares_for(
    settings: Settings,
    card: dict,
    spec: ResolvedSpec,
    shard_sizes: list[int],
    measured: bool,
    group_shares: dict[str, float] | None = None,
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
            group_shares=group_shares,
        )
        for n in set(shard_sizes)
    }
    return [by_size[n] for n in shard_sizes]


def plan_shards(settings: Settings, order: Order) -> ShardPlan:
    n, per = order.spec.identities, settings.shard_identities
    bounds = [(i * per, min(n, (i + 1) * per)) for i in range(math.ceil(n / per))]
    card = order.desc.card
    shares = order_group_shares(order)
    measured = order_failure(card, shares) is not None and at_card_thresholds(order.spec, card)
    sizes = [b - a for a, b in bounds]
    spares = spares_for(settings, card, order.spec, sizes, measured, shares)
    return ShardPlan(bounds, spares, measured)


def order_group_shares(order: Order) -> dict[str, float] | None:
    """How the order's images spread over the |yaw| groups (None: the model has no pose
    bank)."""
    bank = order.desc.pose_bank
    return None if bank is None else group_shares(bank.weights(order.spec.pose))


def too_few_identities(order: Order, plan: ShardPlan, free: int) -> JobError:
    why = ""
    if plan.measured:
        failure = order_failure(order.desc.card, order_group_shares(order))
        q = drop_probability(failure, order.spec.images_per_identity)
        why = (
            f"; at {order.spec.images_per_identity} images per identity the filters drop "
            f"{q:.1%} of this model's identities (its card's measured drop rate)"
        )
    return JobError(
        409,
        "identities",
        f"model {order.desc.name!r} has {free} free virtual identities; the job needs "
        f"{plan.prototypes_needed} ({order.spec.identities} identities + {sum(plan.spares)} "
        f"spares that replace identities the privacy filter drops{why})",
    )


def prior_job(db: Session, team: Team, key: str | None, digest: str) -> Job | None:
    """The job an idempotency key already made (409 if it was made by another request)."""
    if not key:
        return None
    prior = db.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == key))
    if prior is not None and prior.request_hash != digest:
        raise JobError(409, "Idempotency-Key", "this key was used with a different request")
    return prior


def persist_job(
    db: Session, team: Team, order: Order, plan: ShardPlan, key: str | None, digest: str
) -> Job:
    """Job, shards and ledger rows in the session, then commit (IntegrityError: a concurrent
    submission took a prototype, or the same idempotency key, first)."""
    free = free_prototype_ids(db, order.desc)
    if len(free) < plan.prototypes_needed:
        raise too_few_identities(order, plan, len(free))
    alloc = free[: plan.prototypes_needed]
    job = Job(
        id=str(uuid.uuid4()),  # known before the insert: ledger and shards refer to it
        team_id=team.id,
        model=order.desc.name,
        prototype_set=order.desc.prototype_set,
        spec=order.spec.model_dump(),
        priority=order.priority,
        webhook_url=order.webhook_url,
        idempotency_key=key,
        request_hash=digest,
        images_requested=order.images,
        identities_allocated=plan.prototypes_needed,
        evaluate_on=order.evaluate_on or None,
        progress={
            "sampled": 0,
            "identities_done": 0,
            "eta_at_submission_s": order.eta_s,
            **({"warnings": order.warnings} if order.warnings else {}),
        },
    )
    db.add(job)
    slots, spare_rows = alloc[: order.spec.identities], iter(alloc[order.spec.identities :])
    for i, ((a, b), k) in enumerate(zip(plan.bounds, plan.spares, strict=True)):
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
    allocate(db, order.desc, order.desc.name, alloc, job.id)
    db.commit()
    return job


def submit_job(
    db: Session, settings: Settings, team: Team, order: Order, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Create a job (or return the one this idempotency key made). Returns (job, created)."""
    digest = order.request_hash()
    if (prior := prior_job(db, team, idempotency_key, digest)) is not None:
        return prior, False
    plan = plan_shards(settings, order)
    for attempt in range(ALLOCATION_RETRIES + 1):
        # lock the team row so concurrent submissions of one team see each other's usage
        db.scalar(select(Team).where(Team.id == team.id).with_for_update())
        check_quota(db, team, order.images)
        try:  # one transaction: the job, its shards and its ledger rows, or none of them
            return persist_job(db, team, order, plan, idempotency_key, digest), True
        except IntegrityError as exc:
            db.rollback()
            # the same key won a race with this request: answer with its job
            if (prior := prior_job(db, team, idempotency_key, digest)) is not None:
                return prior, False
            if attempt == ALLOCATION_RETRIES:
                raise JobError(
                    409, "identities", "virtual identities were allocated concurrently; retry"
                ) from exc
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # de-synchronise contenders
    raise AssertionError("unreachable")
