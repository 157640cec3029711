"""What a job gives back when it ends without delivering (canceled or failed).

The rule: a job's images count against its team's monthly quota only while it is queued,
running or succeeded (see ``app.services.jobs.images_used_this_month``), so a canceled or failed
job gives its whole order back. A virtual prototype is released only if none of its images can
have been written anywhere: the prototypes of shards that never started (``queued``, no
attempt). A shard that ever ran may have written images of its prototypes (to a work disk, to
the store), so those stay sold to the job, and a retry reuses them.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
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
