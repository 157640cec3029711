"""The monthly image quota of a team: what its jobs of this month hold against it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.services.errors import JobError
from jobstore.models import Job, JobStatus, Team, utcnow


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


def check_quota(db: Session, team: Team, images: int) -> None:
    """429 on ``images`` when the team's month has no room for them. Lock the team row first
    (``with_for_update``) so concurrent submissions of one team see each other's usage."""
    used = images_used_this_month(db, team)
    if used + images > team.monthly_quota:
        raise JobError(
            429,
            "images",
            f"monthly quota exceeded: {used} of {team.monthly_quota} images used, "
            f"this job needs {images}",
        )
