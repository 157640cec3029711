"""/v1/jobs: submit, read, list, cancel, report, artifacts."""

from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.api.deps import current_team, get_db, get_settings_dep
from app.schemas import JobCreate, JobOut, JobPage
from app.services.jobs import JobError, cancel_job, submit_job, visible_job, visible_jobs
from model_store import ModelNotFound
from vigface.dataset.spec import DatasetSpec
from workers.db.models import Job, Team, utcnow
from workers.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_or_404(db: Session, team: Team, job_id: str) -> Job:
    """The job if this team may see it; otherwise 404 (never 403: ids of others stay hidden)."""
    job = visible_job(db, team, job_id)
    if job is None:
        raise HTTPException(404, detail=[{"field": "job_id", "message": "no such job"}])
    return job


def job_out(job: Job) -> JobOut:
    shards: dict[str, int] = {}
    for s in job.shards:
        shards[s.status] = shards.get(s.status, 0) + 1
    eta = None
    if job.status == "running" and job.started_at and job.images_done:
        rate = job.images_done / max((utcnow() - job.started_at).total_seconds(), 1e-3)
        eta = round((job.images_requested - job.images_done) / rate, 1)
    return JobOut(
        id=job.id,
        status=job.status,
        model=job.model,
        team=job.team.name,
        spec=job.spec,
        priority=job.priority,
        images_requested=job.images_requested,
        images_done=job.images_done,
        progress=job.progress or {},
        shards=shards,
        identities_allocated=sum(len(s.prototypes) for s in job.shards),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        eta_seconds=eta,
        error=job.error,
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
    from workers.runner import load_model

    model = body.model or settings.default_model
    fields = body.model_dump(exclude={"model", "priority", "webhook_url"})
    try:
        spec = DatasetSpec(**fields, batch_size=settings.sampler_batch_size)
    except ValidationError as exc:
        raise JobError(
            422, ".".join(map(str, exc.errors()[0]["loc"])), exc.errors()[0]["msg"]
        ) from exc
    try:
        gen = load_model(settings, model)
    except ModelNotFound as exc:
        raise JobError(422, "model", str(exc)) from exc
    from vigface.dataset.pose import PoseBank, PoseSpecError

    try:
        PoseBank.from_landmarks(gen.pose_landmarks).weights(spec.pose)
    except PoseSpecError as exc:
        raise JobError(422, "pose", str(exc)) from exc
    job, created = submit_job(
        db,
        settings,
        team,
        model,
        spec,
        gen.fr.virtual_prototypes.shape[0],
        body.priority,
        body.webhook_url,
        idempotency_key,
    )
    if created:
        enqueue(job)
    return job, created


@router.post("", status_code=202, response_model=JobOut)
def post_job(
    body: JobCreate,
    request: Request,
    response: Response,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    idempotency_key: str | None = Header(None),
) -> JobOut:
    job, created = create_job(db, settings, team, body, idempotency_key, request.app.state.enqueue)
    if not created:
        response.status_code = 200
    return job_out(job)


@router.get("", response_model=JobPage)
def list_jobs(
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    status: str | None = Query(
        None, pattern="^(queued|running|finalizing|succeeded|failed|canceled)$"
    ),
    limit: int = Query(20, ge=1, le=200),
    cursor: str | None = None,
) -> JobPage:
    q = visible_jobs(team, status)
    if cursor:
        try:
            ts, jid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
            q = q.where(
                (Job.created_at < datetime.fromisoformat(ts))
                | ((Job.created_at == datetime.fromisoformat(ts)) & (Job.id < jid))
            )
        except ValueError as exc:
            raise HTTPException(
                422, detail=[{"field": "cursor", "message": "malformed cursor"}]
            ) from exc
    jobs = list(db.scalars(q.limit(limit + 1)))
    nxt = None
    if len(jobs) > limit:
        last = jobs[limit - 1]
        nxt = base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
        jobs = jobs[:limit]
    return JobPage(items=[job_out(j) for j in jobs], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobOut)
def get_job(
    job_id: str, team: Team = Depends(current_team), db: Session = Depends(get_db)
) -> JobOut:
    job = job_or_404(db, team, job_id)
    return job_out(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(
    job_id: str, team: Team = Depends(current_team), db: Session = Depends(get_db)
) -> JobOut:
    job = job_or_404(db, team, job_id)
    return job_out(cancel_job(db, job))


@router.get("/{job_id}/report")
def report(job_id: str, team: Team = Depends(current_team), db: Session = Depends(get_db)) -> dict:
    job = job_or_404(db, team, job_id)
    if job.report is None:
        raise HTTPException(
            409, detail=[{"field": "status", "message": f"job is {job.status}; no report yet"}]
        )
    return job.report


@router.get("/{job_id}/artifacts")
def artifacts(
    job_id: str,
    request: Request,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> dict:
    job = job_or_404(db, team, job_id)
    if not job.artifacts:
        raise HTTPException(
            409, detail=[{"field": "status", "message": f"job is {job.status}; no artifacts yet"}]
        )
    store = request.app.state.store
    links = {
        key.split(f"jobs/{job.id}/", 1)[1]: store.url(key, settings)
        for key in job.artifacts["keys"]
    }
    return {"job_id": job.id, "files": links}
