"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints, field_validator

from vigface.dataset.spec import DatasetOrder

# a model is named by its store name, never a path (no "/", no leading ".")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


BENCHMARK_NAME_PATTERN = MODEL_NAME_PATTERN


class JobCreate(DatasetOrder):
    """A dataset order as the API takes it: the order plus model, priority and webhook."""

    model: str | None = Field(
        None,
        max_length=100,
        pattern=MODEL_NAME_PATTERN,
        description="model-store name (default: the server's); never a path",
    )
    priority: StrictInt = Field(5, ge=0, le=9)
    evaluate_on: list[
        Annotated[str, StringConstraints(pattern=BENCHMARK_NAME_PATTERN, max_length=100)]
    ] = Field(
        [],
        max_length=5,
        description="benchmarks registered with `vigface admin add-benchmark`: the finished "
        "dataset trains the utility probe and the report gets its verification accuracy",
    )
    confirm_large: StrictBool = Field(
        False,
        description="place an order above the deployment's size or time bound "
        "(VIGFACE_CONFIRM_ABOVE_IMAGES, VIGFACE_CONFIRM_ABOVE_ETA_HOURS)",
    )
    webhook_url: str | None = Field(
        None,
        pattern=r"^https?://",
        max_length=2000,
        description="called on completion or failure; private, loopback and link-local "
        "addresses are refused unless the deployment allows them",
    )


class JobOut(BaseModel):
    """Timestamps are UTC with an explicit offset (the database stores them naive, in UTC)."""

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
    evaluate_on: list[str] = []
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    eta_seconds: float | None = Field(
        None,
        description="running: remaining images / sampling_img_per_s; queued: the estimate at "
        "submission (the model's measured rate, other live orders interleaved); else null",
    )
    sampling_img_per_s: float | None = Field(
        None, description="images per second the job's workers are sampling now"
    )
    progress_updated_at: datetime | None = Field(
        None, description="when images_done last changed (clients extrapolate from it)"
    )
    error: str | None
    warnings: list[str] = Field(
        default_factory=list,
        description="what admission knows the order will not get as asked (a pose the model "
        "does not reach, from its calibration)",
    )
    webhook: dict | None = Field(
        None, description="the completion webhook's delivery: status, attempts, last_error"
    )

    @field_validator("created_at", "started_at", "finished_at", "progress_updated_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ModelOut(BaseModel):
    name: str
    kind: str
    output_size: int | None = Field(
        None, description="side of the faces it draws, before the 112-px crops are written"
    )
    virtual_identities: int
    free_virtual_identities: int = Field(
        description="virtual identities no order holds yet, in this model's ledger"
    )
    shares_ledger_with: list[str] = Field(
        default_factory=list,
        description="other models selling the same identities (copies or extensions of one "
        "W_V): an order on any of them uses up the free count of all",
    )
    card: dict


class FieldError(BaseModel):
    field: str = Field(description="the request field (or header) at fault")
    message: str


class ErrorOut(BaseModel):
    """Every 4xx answer of the API has this body."""

    detail: list[FieldError]


def number_kind(name: str) -> type | None:
    """``int`` or ``float`` for a numeric field of :class:`JobCreate` (None otherwise): how a
    form's text for it is parsed before the order's strict types see it."""
    import types
    import typing

    annotation = JobCreate.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation if annotation in (int, float) else None
