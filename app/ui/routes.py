"""Dashboard pages. They read through app.services and create jobs through the same
``create_job`` as ``POST /v1/jobs``; the session cookie holds a random session token whose
row (``dashboard_sessions``) sign-out deletes."""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import get_db, get_settings_dep
from app.services.auth import end_session, hash_key, start_session, team_for_session
from app.services.lifecycle import cancel_job, retry_job
from app.services.links import download_link
from app.services.models import model_entries
from app.services.views import job_or_404, job_out, job_outs, visible_jobs
from jobstore.models import ApiKey, Team
from jobstore.settings import Settings
from model_store import list_models, resolve
from vigface.dataset.report import format_or_na
from vigface.model_card import load_card

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["format"] = format_or_na  # "n/a" for a metric a report leaves undefined


def pose_text(pose) -> str:
    """An order's pose as a person reads it: the preset's name, or each yaw bin's share."""
    if isinstance(pose, dict):
        total = sum(pose.values()) or 1.0
        return ", ".join(f"{b}: {100 * w / total:.0f} %" for b, w in pose.items())
    return str(pose).replace("_", " ")


PROGRESS_WORDS = {  # what the job page says of each progress entry, in this order
    "sampled": "{} images drawn",
    "identities_done": "{} identities done",
    "shard_seconds": "{:.0f} s of shard work",
    "spares_released": "{} unused spares given back",
    "identities_released": "{} identities of unstarted shards given back",
    "retries": "retried {} times",
    "finalize_starts": "finalize started {} times",
    "finalize_seconds": "finalized in {:.0f} s",
}


def progress_text(progress: dict) -> str:
    """A job's progress as sentences: no dictionaries, no None (counts of handed-back shards
    are added up, the queue estimate is shown where it is)."""
    parts = [words.format(progress[k]) for k, words in PROGRESS_WORDS.items() if progress.get(k)]
    handed = sum((progress.get("given_back") or {}).values())
    if handed:
        parts.append(f"shards handed back by stopping workers {handed} times")
    return ", ".join(parts) or "nothing drawn yet"


templates.env.filters["pose_text"] = pose_text
templates.env.filters["progress_text"] = progress_text
router = APIRouter(prefix="/ui", include_in_schema=False)


SESSION_HOURS = 8  # as the cookie's max_age (app.main)


class LoginRequired(Exception):
    pass


def session_team(request: Request, db: Session = Depends(get_db)) -> Team:
    team = team_for_session(db, request.session.get("sid"))
    if team is None:
        raise LoginRequired()
    return team


def csrf_token(request: Request) -> str:
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(24)
    return request.session["csrf"]


def check_csrf(request: Request, token: str) -> None:
    expected = request.session.get("csrf")
    if not (token and expected and secrets.compare_digest(token.encode(), expected.encode())):
        raise HTTPException(
            403, detail=[{"field": "csrf", "message": "stale form; reload the page"}]
        )


def page(request: Request, name: str, team: Team | None, **ctx) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"team": team, "csrf": csrf_token(request), **ctx}
    )


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None, error=None)


@router.post("/login")
def login(
    request: Request,
    api_key: str = Form(""),
    csrf: str = Form(""),
    db: Session = Depends(get_db),
):
    # the form's token must be the one this browser got with the form: a page of another site
    # cannot sign a browser in with its own key (login CSRF)
    check_csrf(request, csrf)
    key = db.scalar(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(api_key.strip()), ApiKey.revoked.is_(False)
        )
    )
    if key is None:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"team": None, "error": "Unknown API key.", "csrf": csrf_token(request)},
            status_code=401,
        )
    request.session.clear()
    request.session["sid"] = start_session(db, key, hours=SESSION_HOURS)
    return RedirectResponse("/ui/jobs", status_code=303)


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), db: Session = Depends(get_db)):
    check_csrf(request, csrf)
    end_session(db, request.session.get("sid"))  # a copy of the cookie is dead too
    request.session.clear()
    return RedirectResponse("/ui/login", status_code=303)


@router.get("/jobs")
def jobs_page(
    request: Request,
    status: str | None = None,
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
) -> HTMLResponse:
    jobs = job_outs(db, list(db.scalars(visible_jobs(team, status).limit(100))))
    return page(request, "jobs.html", team, jobs=jobs, status=status, nav="jobs")


@router.get("/jobs/{job_id}")
def job_page(
    job_id: str,
    request: Request,
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> HTMLResponse:
    job = job_or_404(db, team, job_id)
    downloads, samples = {}, []
    if job.artifacts:
        store = request.app.state.store
        keys = job.artifacts["keys"]
        for name in (
            "dataset_card.json",
            "manifest.csv",
            "report.json",
            "report.html",
            "recordio/train.rec",
            "recordio/train.idx",
        ):
            key = f"jobs/{job.id}/{name}"
            if key in keys:
                downloads[name] = download_link(store, settings, key)
        shards = [k for k in keys if "/webdataset/" in k]
        for k in shards[:3]:
            downloads[k.split(f"jobs/{job.id}/", 1)[1]] = download_link(store, settings, k)
        samples = [download_link(store, settings, k) for k in keys if "/imagefolder/" in k][:24]
    return page(
        request,
        "job.html",
        team,
        job=job_out(job),
        report=job.report,
        downloads=downloads,
        samples=samples,
        nav="jobs",
    )


@router.post("/jobs/{job_id}/cancel")
def cancel_page(
    job_id: str,
    request: Request,
    csrf: str = Form(""),
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
):
    check_csrf(request, csrf)
    job = job_or_404(db, team, job_id)
    cancel_job(db, job)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry_page(
    job_id: str,
    request: Request,
    csrf: str = Form(""),
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
):
    """The dashboard's retry: the same service call as POST /v1/jobs/{id}/retry."""
    check_csrf(request, csrf)
    state = request.app.state
    retry_job(
        db, settings, job_or_404(db, team, job_id), state.enqueue_shard, state.enqueue_finalize
    )
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.get("/models")
def models_page(
    request: Request,
    team: Team = Depends(session_team),
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
) -> HTMLResponse:
    models = []
    for m in model_entries(db, settings):
        grids_dir = resolve(m.name) / "grids"
        grids = {
            p.stem: f"/ui/models/{m.name}/grids/{p.name}" for p in sorted(grids_dir.glob("*.png"))
        }
        measured = sorted(p.stem for p in (resolve(m.name) / "measurements").glob("*.json"))
        judged = (m.card.get("capacity") or {}).get("judge") or {}
        figure = f"/ui/models/{m.name}/capacity.png" if judged.get("figure") else None
        models.append(
            {**m.model_dump(), "grids": grids, "measurements": measured, "capacity_figure": figure}
        )
    return page(request, "models.html", team, models=models, nav="models")


@router.get("/models/{name}/capacity.png")
def model_capacity_figure(name: str, team: Team = Depends(session_team)) -> FileResponse:
    """The outside judge's capacity curve the card points at (inside the entry only)."""
    if name not in {e.name for e in list_models()}:  # a store name, never a path
        raise HTTPException(404, detail=[{"field": "name", "message": "no such model"}])
    entry = resolve(name).resolve()
    figure = ((load_card(entry).get("capacity") or {}).get("judge") or {}).get("figure")
    path = (entry / figure).resolve() if figure else None
    if path is None or entry not in path.parents or not path.is_file() or path.suffix != ".png":
        raise HTTPException(404, detail=[{"field": "name", "message": "no capacity figure"}])
    return FileResponse(path)


@router.get("/models/{name}/grids/{file}")
def model_grid(name: str, file: str, team: Team = Depends(session_team)) -> FileResponse:
    if name not in {e.name for e in list_models()}:  # a store name, never a path
        raise HTTPException(404, detail=[{"field": "name", "message": "no such model"}])
    grids = (resolve(name) / "grids").resolve()
    path = (grids / file).resolve()
    if path.parent != grids or not path.is_file() or path.suffix != ".png":
        raise HTTPException(404, detail=[{"field": "file", "message": "no such grid"}])
    return FileResponse(path)
