"""Plain ASGI checks in front of every route: request size and unreadable paths."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


UI_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src * data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class SecurityHeaders:
    """Headers every answer carries: no framing (clickjacking), no content sniffing, no full
    referrer to other sites; the dashboard's pages also a content security policy (scripts and
    styles from this service only, forms posting only here)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ui = scope["path"].startswith("/ui")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if ui:
                    headers.append((b"content-security-policy", UI_POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
