"""/v1/jobs: submit, read, list, cancel, report, artifacts."""

from __future__ import annotations

import base64
from datetime import datetime

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import current_team, get_db, get_settings_dep
from app.api.errors import error_responses
from app.schemas import JobCreate, JobOut, JobPage
from app.services import cache
from app.services.admission import create_job
from app.services.lifecycle import cancel_job, retry_job
from app.services.links import download_link
from app.services.views import job_or_404, job_out, job_outs, visible_jobs
from jobstore.models import Job, JobStatus, Team
from jobstore.settings import Settings

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=error_responses(400, 401, 404, 413, 422)
)


def no_artifacts(job) -> HTTPException:
    """409 for a job with nothing to download, saying whether anything ever will be."""
    if job.status in (JobStatus.CANCELED, JobStatus.FAILED):
        why = f"job is {job.status}: nothing was delivered"
        if job.status == JobStatus.FAILED:
            why += " (POST /v1/jobs/{id}/retry finishes it from where it stopped)"
    else:
        why = f"job is {job.status}; the dataset is delivered when it succeeds"
    return HTTPException(409, detail=[{"field": "status", "message": why}])


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={200: {"model": JobOut, "description": "the job this Idempotency-Key made"}}
    | error_responses(409, 429),
)
def post_job(
    body: JobCreate,
    request: Request,
    response: Response,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    idempotency_key: str | None = Header(None, max_length=200),
) -> JobOut:
    job, created = create_job(db, settings, team, body, idempotency_key, request.app.state.enqueue)
    if not created:
        response.status_code = 200
    return job_out(job)


@router.get("", response_model=JobPage)
async def list_jobs(
    request: Request,
    team: Team = Depends(current_team),
    status: JobStatus | None = Query(None),
    limit: int = Query(20, ge=1, le=200),
    cursor: str | None = None,
) -> Response:
    key = (team.id, str(request.url.query))
    cached = cache.statuses.get(key)
    if cached is None:
        sessions = request.app.state.sessions
        page = await run_in_threadpool(_job_page, sessions, team, status, limit, cursor)
        cached = (team.id, page.model_dump_json().encode())
        cache.statuses.put(key, cached)
    return Response(cached[1], media_type="application/json")


def _job_page(sessions, team: Team, status, limit: int, cursor: str | None) -> JobPage:
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
    with sessions() as db:
        # the caller's row into this session (held: the identity map keeps weak references),
        # so job_outs needs no query for the team's name
        caller = db.merge(team, load=False)
        jobs = list(db.scalars(q.limit(limit + 1)))
        nxt = None
        if len(jobs) > limit:
            last = jobs[limit - 1]
            stamp = f"{last.created_at.isoformat()}|{last.id}"
            nxt = base64.urlsafe_b64encode(stamp.encode()).decode()
            jobs = jobs[:limit]
        page = JobPage(items=job_outs(db, jobs), next_cursor=nxt)
        del caller
        return page


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, request: Request, team: Team = Depends(current_team)) -> Response:
    """The job's record; polls within ``VIGFACE_STATUS_CACHE_SECONDS`` share one answer."""
    cached = cache.statuses.get(job_id)
    if cached is None or (cached[0] != team.id and not team.is_admin):
        cached = await run_in_threadpool(_job_status, request.app.state.sessions, team, job_id)
        cache.statuses.put(job_id, cached)
    return Response(cached[1], media_type="application/json")


def _job_status(sessions, team: Team, job_id: str) -> tuple[int, bytes]:
    with sessions() as db:
        caller = db.merge(team, load=False)  # held, as in _job_page
        job = job_or_404(db, caller, job_id)
        return job.team_id, job_out(job).model_dump_json().encode()


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(
    job_id: str, team: Team = Depends(current_team), db: Session = Depends(get_db)
) -> JobOut:
    job = job_or_404(db, team, job_id)
    return job_out(cancel_job(db, job))


@router.post(
    "/{job_id}/retry", status_code=202, response_model=JobOut, responses=error_responses(409, 429)
)
def retry(
    job_id: str,
    request: Request,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> JobOut:
    """Run a failed job again from where it stopped (finished shards are kept)."""
    state = request.app.state
    job = retry_job(
        db, settings, job_or_404(db, team, job_id), state.enqueue_shard, state.enqueue_finalize
    )
    return job_out(job)


@router.get("/{job_id}/report", responses=error_responses(409))
def report(job_id: str, team: Team = Depends(current_team), db: Session = Depends(get_db)) -> dict:
    job = job_or_404(db, team, job_id)
    if job.report is None:
        raise HTTPException(
            409, detail=[{"field": "status", "message": f"job is {job.status}; no report yet"}]
        )
    return job.report


@router.get("/{job_id}/artifacts", responses=error_responses(409))
def artifacts(
    job_id: str,
    request: Request,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> dict:
    job = job_or_404(db, team, job_id)
    if not job.artifacts:
        raise no_artifacts(job)
    store = request.app.state.store
    rel = {key: key.split(f"jobs/{job.id}/", 1)[1] for key in job.artifacts["keys"]}
    links = {r: download_link(store, settings, key) for key, r in rel.items()}
    sizes = job.artifacts.get("sizes", {})
    return {
        "job_id": job.id,
        "files": links,
        "sizes": {r: sizes[key] for key, r in rel.items() if key in sizes},
        "archive": f"{settings.base_url.rstrip('/')}/v1/jobs/{job.id}/archive",
    }


@router.get("/{job_id}/archive", response_class=StreamingResponse, responses=error_responses(409))
def archive(
    job_id: str,
    request: Request,
    team: Team = Depends(current_team),
    db: Session = Depends(get_db),
) -> StreamingResponse:
    """The whole dataset as one uncompressed tar, streamed from the store (JPEGs do not
    compress; tar needs no index, so the first byte goes out at once)."""
    job = job_or_404(db, team, job_id)
    if not job.artifacts:
        raise no_artifacts(job)
    store = request.app.state.store
    sizes = job.artifacts.get("sizes", {})
    members = [
        (key, key.split(f"jobs/{job.id}/", 1)[1], sizes.get(key) or store.size(key))
        for key in job.artifacts["keys"]
    ]
    total = sum(512 + -(-n // 512) * 512 for _, _, n in members) + 1024
    return StreamingResponse(
        tar_stream(store, members, f"vigface-{job.id}"),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="vigface-{job.id}.tar"',
            "Content-Length": str(total),
        },
    )


def tar_stream(store, members, root: str):
    """A ustar archive of ``(key, name, size)`` members under ``root/``, chunk by chunk."""
    import tarfile

    for key, name, size in members:
        info = tarfile.TarInfo(f"{root}/{name}")
        info.size, info.mode, info.mtime = size, 0o644, 0
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        yield from store.iter_bytes(key)
        if size % 512:
            yield b"\0" * (512 - size % 512)
    yield b"\0" * 1024
