"""Request-scoped dependencies: settings, database session, the calling team."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session

from app.services.auth import team_for_key
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
        from workers.db.models import ApiKey

        row = db.get(ApiKey, request.session.get("key_id") or -1)
        bound = row is not None and request.session.get("key_check") == row.key_hash[:16]
        team = row.team if bound and not row.revoked else None
    if team is None:
        raise HTTPException(
            401, detail=[{"field": "Authorization", "message": "missing or unknown API key"}]
        )
    return team
