"""The identity ledger: which virtual prototypes are sold, to which job.

Every virtual prototype is sold once. A job's prototypes (with spares that replace identities
the privacy filter drops) are rows of ``identity_ledger`` with a unique (prototype set,
prototype) key, written in the submission's transaction (:func:`allocate`); what is free is
what no row holds (:func:`free_prototype_ids`, :func:`free_prototypes`).

What a job gives back when it ends without delivering (canceled or failed). The rule: a
job's images count against its team's monthly quota only while it is queued, running or
succeeded (see ``app.services.admission.images_used_this_month``), so a canceled or failed
job gives its whole order back. A virtual prototype is released only if none of its images can
have been written anywhere: the prototypes of shards that never started (``queued``, no
attempt). A shard that ever ran may have written images of its prototypes (to a work disk, to
the store), so those stay sold to the job, and a retry reuses them.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from workers.db.models import Job, LedgerEntry, Shard, ShardStatus


def release_unstarted(db: Session, job: Job) -> list[int]:
    """Cancel the shards of ``job`` that never started and release their prototypes from the
    ledger. Conditional updates: a worker claiming a shard at the same moment wins or loses
    cleanly. Returns the released prototype ids; the caller commits."""
    released = []
    for shard in db.scalars(select(Shard).where(Shard.job_id == job.id)):
        taken = db.execute(
            update(Shard)
            .where(Shard.id == shard.id, Shard.status == ShardStatus.QUEUED, Shard.attempts == 0)
            .values(status=ShardStatus.CANCELED)
        ).rowcount
        if taken:
            released += shard.prototypes
    if released:
        db.execute(
            delete(LedgerEntry).where(
                LedgerEntry.job_id == job.id, LedgerEntry.prototype_id.in_(released)
            )
        )
    job.progress = {
        **(job.progress or {}),
        "identities_released": (job.progress or {}).get("identities_released", 0) + len(released),
    }
    return released


def free_prototypes(db: Session, prototype_set: str, total: int) -> int:
    """How many of a model's ``total`` virtual prototypes no job holds. The ledger is keyed by
    the prototype set's digest, so every name, copy or re-push of the same W_V counts together."""
    used = db.scalar(select(func.count()).where(LedgerEntry.prototype_set == prototype_set))
    return total - int(used)


def free_prototype_ids(db: Session, prototype_set: str, total: int) -> list[int]:
    """The free prototype rows of a set of ``total``, in row order."""
    rows = select(LedgerEntry.prototype_id).where(LedgerEntry.prototype_set == prototype_set)
    taken = set(db.scalars(rows))
    return [p for p in range(total) if p not in taken]


def allocate(db: Session, model: str, prototype_set: str, ids: list[int], job_id: str) -> None:
    """Sell ``ids`` to ``job_id``; the caller commits, and a unique-key violation at commit
    means a concurrent submission took one of them first."""
    db.add_all(
        LedgerEntry(model=model, prototype_set=prototype_set, prototype_id=p, job_id=job_id)
        for p in ids
    )
