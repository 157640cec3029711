"""The documented error answers: every 4xx body is ``ErrorOut`` (a list of field + message)."""

from __future__ import annotations

from app.schemas import ErrorOut

MEANING = {
    400: "malformed request",
    401: "missing, unknown or revoked API key",
    404: "no such job or file (other teams' ids read as missing)",
    409: "conflicts with the current state (identities, idempotency key, job status)",
    413: "request body too large",
    422: "a field is invalid; `field` names it",
    429: "monthly image quota exceeded",
}


def error_responses(*codes: int) -> dict:
    """``responses=`` for a route: each code with the shared error schema."""
    return {c: {"model": ErrorOut, "description": MEANING[c]} for c in codes}
