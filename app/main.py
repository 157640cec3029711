"""The FastAPI app: ``create_app(settings)`` wires storage, database and job dispatch."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.api import jobs, misc
from app.services import cache
from app.services.jobs import JobError
from model_store.storage import open_store
from workers.db.session import init_db, session_factory
from workers.settings import Settings, get_settings


def celery_dispatch(settings: Settings):
    """(enqueue a job's shards, enqueue one shard, enqueue a finalize) through Celery."""
    from workers.celery_app import make_celery

    celery = make_celery(settings)

    def enqueue_shard(shard_id: int, priority: int = 5) -> None:
        celery.send_task("vigface.run_shard", args=[shard_id], queue="gpu", priority=priority)

    def enqueue(job) -> None:
        for shard in job.shards:
            enqueue_shard(shard.id, job.priority)

    def enqueue_finalize(job_id: str) -> None:
        celery.send_task("vigface.finalize_job", args=[job_id], queue="gpu")

    return enqueue, enqueue_shard, enqueue_finalize


class BodyCap:
    """Refuse a body whose Content-Length exceeds ``limit`` before reading it (an order is a
    few hundred bytes); bodies sent without a length are not capped here. Plain ASGI, so it
    costs nothing on the requests it lets through."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                detail = [{"field": "body", "message": f"at most {self.limit} bytes"}]
                await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="VIGFace",
        version="0.1.0",
        description="Synthetic face-recognition datasets of identities that do not exist.",
    )
    init_db(settings.database_url)
    app.state.settings = settings
    cache.configure(settings.auth_cache_seconds, settings.status_cache_seconds)
    app.state.sessions = session_factory(settings.database_url)
    app.state.store = open_store(
        settings.storage_url, settings.s3_endpoint_url, settings.s3_public_endpoint_url
    )
    # embedded mode: the worker thread polls the database, nothing to send
    if settings.broker_url:
        app.state.enqueue, app.state.enqueue_shard, app.state.enqueue_finalize = celery_dispatch(
            settings
        )
    else:
        app.state.enqueue = app.state.enqueue_shard = app.state.enqueue_finalize = lambda *a: None

    @app.exception_handler(JobError)
    def _job_error(_: Request, exc: JobError) -> JSONResponse:
        return JSONResponse({"detail": [{"field": exc.field, "message": exc.message}]}, exc.status)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Every error body in the documented shape; a 405 lists every method the path has
        (Starlette's own names only the first route that matched the path)."""
        detail = exc.detail
        if not isinstance(detail, list | dict):
            detail = [{"field": "path" if exc.status_code in (404, 405) else "", "message": detail}]
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            methods = [
                m
                for m in ("DELETE", "GET", "PATCH", "POST", "PUT")
                if any(
                    r.matches({**request.scope, "method": m})[0] == Match.FULL
                    for r in app.router.routes
                )
            ]
            headers["Allow"] = ", ".join(methods)
        return JSONResponse({"detail": detail}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)

    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.sessions import SessionMiddleware

    from app.ui import routes as ui

    app.add_middleware(BodyCap, limit=settings.max_body_bytes)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret,
        session_cookie="vigface_session",
        same_site="lax",
        max_age=ui.SESSION_HOURS * 3600,
        https_only=settings.base_url.startswith("https://"),
    )

    @app.exception_handler(ui.LoginRequired)
    def _login(_: Request, __: ui.LoginRequired) -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)

    @app.get("/", include_in_schema=False)
    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/jobs")

    app.include_router(jobs.router)
    app.include_router(misc.router)
    app.include_router(ui.router)
    app.mount(
        "/ui/static", StaticFiles(directory=ui.Path(ui.__file__).parent / "static"), name="static"
    )
    return app
