"""Request-scoped dependencies: settings, database session, the calling team."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session

from app.services.auth import team_for_key, team_for_session
from workers.db.models import Team
from workers.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


def current_team(
    request: Request,
    db: Session = Depends(get_db),
    authorization: str | None = Header(None),
    x_api_key: str | None = Header(None),
) -> Team:
    key = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    team = team_for_key(db, key) if key else None
    # the dashboard's cookie reads (its pages poll GET /v1/jobs); it never changes anything
    # through the REST API: a cookie travels with any request the browser makes, a key does not
    cookie_ok = request.method in ("GET", "HEAD")
    if team is None and not key and cookie_ok and "session" in request.scope:
        team = team_for_session(db, request.session.get("sid"))
    if team is None:
        raise HTTPException(
            401, detail=[{"field": "Authorization", "message": "missing or unknown API key"}]
        )
    return team
