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


TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def union_tag(part: str) -> bool:
    """A pydantic union alternative's tag in an error location, not a field."""
    return "[" in part or part.startswith(("constrained-", "function-")) or part in TYPE_NAMES


def field_name(loc: tuple) -> str:
    """A request field as a client names it: no "body" prefix, no pydantic union tags
    (``dict[constrained-str,constrained-float]``, ``str``)."""
    return ".".join(p for p in (str(p) for p in loc if p != "body") if not union_tag(p))


def field_errors(errors: list[dict]) -> list[dict]:
    """Validation errors in the documented shape, one per field: malformed JSON names the
    body; an input that fits no alternative of a union says so once; where one alternative
    got further (a dict with a bad entry), its deeper error stands alone."""
    out: dict[str, list[str]] = {}
    for e in errors:
        if e.get("type") == "json_invalid":
            where = next((p for p in e["loc"] if isinstance(p, int)), None)
            at = f" at character {where}" if where is not None else ""
            out.setdefault("body", []).append(f"not valid JSON{at}: {e['ctx']['error']}")
            continue
        out.setdefault(field_name(e["loc"]), []).append(plain(e))
    fields = list(out)
    deeper = {f for f in fields if any(g != f and g.startswith(f + ".") for g in fields)}
    return [{"field": f, "message": alternatives(out[f])} for f in fields if f not in deeper]


def alternatives(messages: list[str]) -> str:
    """'Input should be a valid string or a valid dictionary' from one message per union
    alternative."""
    unique = list(dict.fromkeys(messages))
    lead = "Input should be "
    if len(unique) > 1 and all(m.startswith(lead) for m in unique):
        return lead + " or ".join(m.removeprefix(lead) for m in unique)
    return "; ".join(unique)


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
        return JSONResponse({"detail": field_errors(exc.errors())}, 422)
