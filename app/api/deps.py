"""Request-scoped dependencies: settings, database session, the calling team."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.services import cache
from app.services.auth import hash_key, team_for_key, team_for_session
from jobstore.models import Team
from jobstore.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


async def current_team(
    request: Request,
    authorization: str | None = Header(None),
    x_api_key: str | None = Header(None),
) -> Team:
    """The calling team, from an API key (or, for reads only, the dashboard's session).

    Async, with the answer cached for ``VIGFACE_AUTH_CACHE_SECONDS`` on reads: a status poll
    then costs no database round trip and no thread hop for authentication. Writes always
    look the key up afresh."""
    key = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    reading = request.method in ("GET", "HEAD")
    # the dashboard's cookie reads (its pages poll GET /v1/jobs); it never changes anything
    # through the REST API: a cookie travels with any request the browser makes, a key does not
    token = key or (request.session.get("sid") if reading and "session" in request.scope else None)
    team = None
    if token:
        digest = ("key:" if key else "session:") + hash_key(token)
        team = cache.callers.get(digest) if reading else None
        if team is None:
            lookup = team_for_key if key else team_for_session
            team = await run_in_threadpool(_lookup, request.app.state.sessions, lookup, token)
            if team is not None:
                cache.callers.put(digest, team)
    if team is None:
        raise HTTPException(
            401, detail=[{"field": "Authorization", "message": "missing or unknown API key"}]
        )
    return team


def _lookup(sessions, lookup, token: str) -> Team | None:
    with sessions() as db:
        return lookup(db, token)  # a detached row: its columns stay readable
