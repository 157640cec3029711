"""The FastAPI app: ``create_app(settings)`` wires storage, database, job dispatch, the
request guard, the error answers and the routes (API, dashboard)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline

from app.api import jobs, misc
from app.api.handlers import install_error_handlers
from app.middleware import RequestGuard, SecurityHeaders
from app.services import cache
from jobstore.session import init_db, session_factory
from jobstore.settings import Settings, get_settings
from model_store.storage import open_store


def install_dispatch(app: FastAPI, settings: Settings) -> None:
    """How admitted work reaches the workers: Celery messages, or nothing to send (embedded
    mode: the worker thread polls the database)."""
    if settings.broker_url:
        from workers.celery_app import CeleryDispatch

        dispatch = CeleryDispatch(settings)
        app.state.enqueue = dispatch.enqueue
        app.state.enqueue_shard = dispatch.enqueue_shard
        app.state.enqueue_finalize = dispatch.enqueue_finalize
    else:
        app.state.enqueue = app.state.enqueue_shard = app.state.enqueue_finalize = lambda *a: None


def install_dashboard(app: FastAPI, settings: Settings) -> None:
    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.sessions import SessionMiddleware

    from app.ui import orders
    from app.ui import routes as ui

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

    app.include_router(ui.router)
    app.include_router(orders.router)
    app.mount(
        "/ui/static", StaticFiles(directory=ui.Path(ui.__file__).parent / "static"), name="static"
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPIOffline(  # a FastAPI whose /docs and /redoc work offline
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
    install_dispatch(app, settings)
    install_error_handlers(app)
    app.add_middleware(RequestGuard, limit=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.include_router(jobs.router)
    app.include_router(misc.router)
    install_dashboard(app, settings)
    return app
