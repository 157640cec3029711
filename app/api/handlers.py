"""How every error is answered: one documented body shape (a list of field + message), for
the API's own refusals, Starlette's and request validation alike."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.services.errors import JobError

BOUND_WORDS = {"less_than_equal": "at most", "greater_than_equal": "at least"}


def plain(error: dict) -> str:
    """A validation message in the words every other bound uses ("at most 10000")."""
    words = BOUND_WORDS.get(error.get("type", ""))
    if words:
        ctx = error.get("ctx", {})
        return f"{words} {ctx.get('le', ctx.get('ge'))}"
    return error["msg"]


def install_error_handlers(app: FastAPI) -> None:
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
