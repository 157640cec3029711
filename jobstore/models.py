"""Teams, API keys, jobs, shards and the identity ledger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JobStatus(StrEnum):
    """A job's life: queued -> running -> finalizing -> succeeded, or failed / canceled."""

    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)  # jobs whose shards may still run


class ShardStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    monthly_quota: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the SHA-256 of a key is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(default=False)
    team: Mapped[Team] = relationship()


class DashboardSession(Base):
    """A signed-in dashboard: the cookie holds a random token, the row its SHA-256. Sign-out
    deletes the row, so a copied cookie stops working; the row also records the key's hash,
    so a session can never act for a key other than the one that signed in."""

    __tablename__ = "dashboard_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    key: Mapped[ApiKey] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        # GET /v1/jobs: a team's jobs, newest first
        Index("ix_jobs_team_created", "team_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    model: Mapped[str] = mapped_column(String(200))
    prototype_set: Mapped[str | None] = mapped_column(String(64), nullable=True)  # W_V digest
    spec: Mapped[dict] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(default=5)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    images_requested: Mapped[int] = mapped_column(Integer)
    images_done: Mapped[int] = mapped_column(Integer, default=0)
    identities_allocated: Mapped[int] = mapped_column(Integer, default=0)  # slots + spares
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True, deferred=True)  # large
    artifacts: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finalize_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)  # its lease
    evaluate_on: Mapped[list | None] = mapped_column(JSON, nullable=True)  # benchmark names
    team: Mapped[Team] = relationship()
    shards: Mapped[list[Shard]] = relationship(back_populates="job", order_by="Shard.index")


class Shard(Base):
    """A fixed range of a job's identity slots: one task, idempotent, leased while running."""

    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("job_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    slot_start: Mapped[int] = mapped_column(Integer)
    slot_end: Mapped[int] = mapped_column(Integer)
    prototypes: Mapped[list] = mapped_column(JSON)  # slots first, then this shard's spares
    status: Mapped[str] = mapped_column(String(16), default=ShardStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    images_done: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)  # last sent to broker
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    job: Mapped[Job] = relationship(back_populates="shards")


class LedgerEntry(Base):
    """One virtual prototype of one model, sold to exactly one job (the unique constraint
    is what guarantees it, whatever the process or machine allocating)."""

    __tablename__ = "identity_ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200))  # the name it was sold under (display)
    # what is sold: the row's own digest (vigface/prototype_set.py row_keys), unique: a row
    # of W_V is one identity, in every copy, alias or extension of the model that holds it
    prototype_key: Mapped[str] = mapped_column(String(64), unique=True)
    lineage: Mapped[str] = mapped_column(String(64), index=True)  # key of the model's row 0
    # the W_V it was sold from and the row's index there (for people and for retries)
    prototype_set: Mapped[str] = mapped_column(String(64))
    prototype_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """The webhook outbox: one row per event, written when the job reaches a final state.
    Deliveries survive worker restarts; every attempt is counted here (``attempts``,
    ``last_error``), and ``msg_id`` (the ``webhook-id`` header) makes the event unique."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    msg_id: Mapped[str] = mapped_column(String(100), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
