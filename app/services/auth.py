"""Teams and API keys. Keys are random 32-byte tokens; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.services import cache
from jobstore.models import ApiKey, DashboardSession, Team, utcnow

KEY_PREFIX = "vgf_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MAX_QUOTA = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL


def create_team(db: Session, name: str, quota: int, is_admin: bool = False) -> Team:
    if not name or len(name) > 100:
        raise ValueError("team name must be 1-100 characters")
    if not 0 <= quota <= MAX_QUOTA:
        raise ValueError(f"quota must be between 0 and {MAX_QUOTA} images a month")
    if db.scalar(select(Team).where(Team.name == name)):
        raise ValueError(f"team {name!r} already exists")
    team = Team(name=name, monthly_quota=quota, is_admin=is_admin)
    db.add(team)
    db.commit()
    return team


def create_key(db: Session, team_name: str) -> str:
    team = db.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        raise ValueError(f"no team named {team_name!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    db.add(ApiKey(team_id=team.id, key_hash=hash_key(key), prefix=key[:12]))
    db.commit()
    return key


def revoke_key(db: Session, prefix: str) -> ApiKey:
    """Revoke the one key whose shown prefix (``vgf_`` + 8 characters, as ``create-key``
    prints) starts with ``prefix``; its API calls and dashboard sessions stop at once."""
    rows = list(db.scalars(select(ApiKey).where(ApiKey.prefix.startswith(prefix))))
    if len(prefix) < 6:
        raise ValueError("give at least the first 6 characters of the key")
    if not rows:
        raise ValueError(f"no key starts with {prefix!r}")
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} keys start with {prefix!r}; give more characters")
    rows[0].revoked = True
    db.execute(delete(DashboardSession).where(DashboardSession.key_id == rows[0].id))
    db.commit()
    cache.clear()
    return rows[0]


def team_for_key(db: Session, key: str) -> Team | None:
    """One query: the key's team row, joined (status polling calls this on every request)."""
    return db.scalar(
        select(Team)
        .join(ApiKey, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked.is_(False))
    )


def start_session(db: Session, key: ApiKey, hours: float) -> str:
    """A new dashboard session for ``key``; returns the token the cookie carries."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))  # tidy up
    db.add(
        DashboardSession(
            token_hash=hash_key(token),
            key_id=key.id,
            key_hash=key.key_hash,
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    db.commit()
    return token


def team_for_session(db: Session, token: str | None) -> Team | None:
    """The team of a live session: not signed out, not expired, its key not revoked and
    still the key that signed in."""
    if not token:
        return None
    row = db.get(DashboardSession, hash_key(token))
    if row is None or row.expires_at < utcnow():
        return None
    key = row.key
    if key is None or key.revoked or key.key_hash != row.key_hash:
        return None
    return key.team


def end_session(db: Session, token: str | None) -> None:
    if token:
        db.execute(delete(DashboardSession).where(DashboardSession.token_hash == hash_key(token)))
        db.commit()
        cache.clear()
