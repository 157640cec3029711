"""The FastAPI app: ``create_app(settings)`` wires storage, database and job dispatch."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.api import jobs, misc
from app.services import cache
from app.services.errors import JobError
from jobstore.session import init_db, session_factory
from jobstore.settings import Settings, get_settings
from model_store.storage import open_store


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, [{"field": "body", "message": f"at most {limit} bytes"}])


class RequestGuard:
    """Plain ASGI checks before any route runs, costing nothing on requests they let through.

    * A body is capped at ``limit`` bytes however it is sent: a Content-Length above it is
      refused before reading, and a body without one (chunked) is counted as it arrives and
      refused (413) once it passes the limit, so no request can make the API hold more.
    * A NUL byte in the path or query can never name anything (PostgreSQL text cannot even
      hold one): 404 for the path, 422 naming the query parameter.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if refused := self._refusal(scope):
            await refused(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # read outside a route (the routes' handler answers it)
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send)

    def _refusal(self, scope) -> JSONResponse | None:
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return JSONResponse({"detail": BodyTooLarge(self.limit).detail}, 413)
        if "\x00" in scope["path"]:
            return JSONResponse({"detail": [{"field": "path", "message": "Not Found"}]}, 404)
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            from urllib.parse import parse_qsl

            names = [k for k, v in parse_qsl(query.decode("latin-1")) if "\x00" in k + v]
            field = names[0] if names else "query"
            message = "a NUL byte is not allowed here"
            return JSONResponse({"detail": [{"field": field, "message": message}]}, 422)
        return None


BOUND_WORDS = {"less_than_equal": "at most", "greater_than_equal": "at least"}


def plain(error: dict) -> str:
    """A validation message in the words every other bound uses ("at most 10000")."""
    words = BOUND_WORDS.get(error.get("type", ""))
    if words:
        ctx = error.get("ctx", {})
        return f"{words} {ctx.get('le', ctx.get('ge'))}"
    return error["msg"]


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
    # embedded mode: the worker thread polls the database, nothing to send
    if settings.broker_url:
        from workers.celery_app import CeleryDispatch

        dispatch = CeleryDispatch(settings)
        app.state.enqueue = dispatch.enqueue
        app.state.enqueue_shard = dispatch.enqueue_shard
        app.state.enqueue_finalize = dispatch.enqueue_finalize
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
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": plain(e)}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)

    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.sessions import SessionMiddleware

    from app.ui import routes as ui

    app.add_middleware(RequestGuard, limit=settings.max_body_bytes)
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
