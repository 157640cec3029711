"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from vigface.dataset.spec import LIMITS


class JobCreate(BaseModel):
    """A dataset order. Bounds are checked before anything is queued."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model-store entry (default: the server's)")
    identities: int = Field(ge=LIMITS["identities"][0], le=LIMITS["identities"][1])
    images_per_identity: int = Field(
        ge=LIMITS["images_per_identity"][0], le=LIMITS["images_per_identity"][1]
    )
    pose: str | dict[str, float] = "match_training"
    guidance: float = Field(4.0, ge=LIMITS["guidance"][0], le=LIMITS["guidance"][1])
    steps: int = Field(25, ge=LIMITS["steps"][0], le=LIMITS["steps"][1])
    scheduler: str = "dpmsolver"
    seed: int = Field(0, ge=0, lt=2**62)
    formats: list[str] = ["imagefolder"]
    tau_consistency: float | None = Field(None, ge=-1, le=1)
    tau_leak: float | None = Field(None, ge=-1, le=1)
    priority: int = Field(5, ge=0, le=9)
    webhook_url: str | None = Field(None, pattern=r"^https?://", max_length=2000)


class JobOut(BaseModel):
    id: str
    status: str
    model: str
    team: str
    spec: dict
    priority: int
    images_requested: int
    images_done: int
    progress: dict
    shards: dict
    identities_allocated: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    eta_seconds: float | None
    error: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ModelOut(BaseModel):
    name: str
    kind: str
    virtual_identities: int
    free_virtual_identities: int
    card: dict
