"""/v1/models, health, readiness, Prometheus metrics and local-store file downloads."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.api.deps import current_team, get_db, get_settings_dep
from app.api.errors import error_responses
from app.schemas import ModelOut
from app.services.models import model_entries
from app.services.views import visible_job
from jobstore.models import Job, JobStatus, LedgerEntry, Shard, Team
from jobstore.settings import Settings

router = APIRouter()


class NotReady(BaseModel):
    detail: dict[str, str] = Field(description="each dependency: ok, embedded or the error")


@router.get(
    "/v1/models",
    response_model=list[ModelOut],
    tags=["models"],
    responses=error_responses(400, 401, 413, 422),
)
def models(
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> list[ModelOut]:
    return model_entries(db, settings)


@router.get("/healthz", tags=["ops"])
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["ops"],
    responses={503: {"model": NotReady, "description": "a dependency is down"}},
)
def readyz(
    request: Request, db: Session = Depends(get_db), settings: Settings = Depends(get_settings_dep)
) -> dict:
    checks = {}
    try:
        db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # reported, not raised: this endpoint's job is to say what is down
        checks["database"] = f"error: {exc}"
    try:
        request.app.state.store.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc}"
    if settings.broker_url:
        try:
            import redis

            redis.Redis.from_url(settings.broker_url, socket_timeout=2).ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {exc}"
    else:
        checks["broker"] = "embedded"
    ok = all(v in ("ok", "embedded") for v in checks.values())
    if not ok:
        raise HTTPException(503, detail=checks)
    return checks


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(db: Session = Depends(get_db)) -> PlainTextResponse:
    reg = CollectorRegistry()
    jobs = Gauge("vigface_jobs", "jobs by status", ["status"], registry=reg)
    for status, n in db.execute(select(Job.status, func.count()).group_by(Job.status)):
        jobs.labels(status).set(n)
    shards = Gauge("vigface_shards", "shards by status", ["status"], registry=reg)
    for status, n in db.execute(select(Shard.status, func.count()).group_by(Shard.status)):
        shards.labels(status).set(n)
    done = Gauge("vigface_images_done", "images generated, all jobs", registry=reg)
    done.set(db.scalar(select(func.coalesce(func.sum(Job.images_done), 0))))
    sold = Gauge("vigface_identities_allocated", "ledger entries", ["model"], registry=reg)
    for model, n in db.execute(select(LedgerEntry.model, func.count()).group_by(LedgerEntry.model)):
        sold.labels(model).set(n)
    rate = Gauge(
        "vigface_worker_img_per_s",
        "sampling throughput of running jobs' workers",
        ["worker", "job"],
        registry=reg,
    )
    mem = Gauge(
        "vigface_worker_gpu_memory_mb",
        "peak accelerator memory of running jobs' workers",
        ["worker", "job"],
        registry=reg,
    )
    running = select(Job.id, Job.progress).where(Job.status == JobStatus.RUNNING)
    for job_id, progress in db.execute(running):
        for worker, st in (progress or {}).get("workers", {}).items():
            rate.labels(worker, job_id).set(st["img_per_s"])
            mem.labels(worker, job_id).set(st["gpu_mem_mb"])
    return PlainTextResponse(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/files/jobs/{job_id}/{path:path}",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}}
    | error_responses(400, 401, 404, 413, 422),
)
def download(
    job_id: str,
    path: str,
    request: Request,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
) -> StreamingResponse:
    job = visible_job(db, team, job_id)
    if job is None or not job.artifacts or f"jobs/{job_id}/{path}" not in job.artifacts["keys"]:
        raise HTTPException(404, detail=[{"field": "path", "message": "no such file"}])
    key = f"jobs/{job_id}/{path}"
    store = request.app.state.store
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return StreamingResponse(
        store.iter_bytes(key), media_type=media, headers={"Content-Length": str(store.size(key))}
    )
