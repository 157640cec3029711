"""The identity ledger: which virtual prototypes are sold, to which job.

Every virtual prototype is sold once. A job's prototypes (with spares that replace identities
the privacy filter drops) are rows of ``identity_ledger`` keyed by each prototype's own digest
(unique), written in the submission's transaction (:func:`allocate`, one multi-row insert);
what is free is every row of the model's W_V whose key no ledger row holds
(:func:`free_prototype_ids`, :func:`free_prototypes`). Keys are per row, so rows appended to
W_V later are new identities and rows sold before stay sold, under any copy of the model.

What a job gives back when it ends without delivering (canceled or failed). The rule: a
job's images count against its team's monthly quota only while it is queued, running or
succeeded (see ``app.services.quota.images_used_this_month``), so a canceled or failed
job gives its whole order back. A virtual prototype is released only if none of its images can
have been written anywhere: the prototypes of shards that never started (``queued``, no
attempt). A shard that ever ran may have written images of its prototypes (to a work disk, to
the store), so those stay sold to the job, and a retry reuses them.

What a shard gives back when it succeeds: the spares no dropped identity took
(:func:`release_unused_spares`). The builder saves each chunk with its position in the spare
queue, so no image of a spare past that position exists anywhere; admission can reserve
spares for the bad case without keeping them from later orders.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from jobstore.models import Job, LedgerEntry, Shard, ShardStatus, utcnow
from model_store.description import ModelDescription


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


def release_unused_spares(db: Session, job: Job, unused: list[int]) -> int:
    """Release a succeeded shard's ``unused`` spare prototypes from ``job``'s ledger rows.
    Returns how many rows went back; the caller records it (``progress.spares_released``;
    ``identities_allocated`` stays what admission reserved, as with ``identities_released``)
    and commits."""
    if not unused:
        return 0
    return db.execute(
        delete(LedgerEntry).where(
            LedgerEntry.job_id == job.id, LedgerEntry.prototype_id.in_(unused)
        )
    ).rowcount


def sold_keys(db: Session, lineage: str) -> set[str]:
    """The keys sold from a model's lineage (it and every copy or extension of it)."""
    return set(db.scalars(select(LedgerEntry.prototype_key).where(LedgerEntry.lineage == lineage)))


def free_prototypes(db: Session, desc: ModelDescription) -> int:
    """How many of a model's virtual prototypes no job holds."""
    return len(free_prototype_ids(db, desc))


def free_prototype_ids(db: Session, desc: ModelDescription) -> list[int]:
    """The free prototype rows of a model, in row order."""
    sold = sold_keys(db, desc.lineage)
    return [i for i, key in enumerate(desc.row_keys) if key not in sold]


def allocate(db: Session, desc: ModelDescription, model: str, ids: list[int], job_id: str) -> None:
    """Sell rows ``ids`` of ``desc``'s W_V to ``job_id`` in the caller's transaction, as
    multi-row INSERTs (a 10,000-identity order is 12,000 rows; ORM objects for each cost more
    than the insert). The session's pending job and shards are flushed first. A unique-key
    violation (here or at commit) means a concurrent submission took one of them first."""
    if not ids:
        return
    now = utcnow()
    db.execute(
        insert(LedgerEntry),
        [
            {
                "model": model,
                "prototype_key": desc.row_keys[p],
                "lineage": desc.lineage,
                "prototype_set": desc.prototype_set,
                "prototype_id": p,
                "job_id": job_id,
                "created_at": now,
            }
            for p in ids
        ],
    )


def rows_still_held(db: Session, job_id: str, keys_by_row: dict[int, str]) -> bool:
    """Whether every row index of ``keys_by_row`` still holds the prototype this job bought
    there (a model re-trained or re-shuffled under the same name would hand other faces)."""
    bought = dict(
        db.execute(
            select(LedgerEntry.prototype_id, LedgerEntry.prototype_key).where(
                LedgerEntry.job_id == job_id, LedgerEntry.prototype_id.in_(list(keys_by_row))
            )
        ).all()
    )
    return all(bought.get(row) == key for row, key in keys_by_row.items())
