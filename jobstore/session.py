"""Engine and session factory for the configured database URL."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import tenacity
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its folder (``var/`` on a fresh clone)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        return engine
    # the role shows in pg_stat_activity (an operator, or a fault test, can tell the API's
    # connections from the workers'); pre-ping drops pooled connections the server closed
    name = os.environ.get("VIGFACE_DB_APPLICATION_NAME", "vigface")
    return create_engine(url, pool_pre_ping=True, connect_args={"application_name": name})


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def init_db(url: str) -> None:
    """Bring the schema to the latest migration (Alembic)."""
    from jobstore.migrate import upgrade

    ensure_sqlite_dir(url)
    upgrade(url)


def lost_connection(exc: BaseException) -> bool:
    """A database error that a new connection can get past: the server restarted or failed
    over, a pooler dropped us, an idle session was terminated, or the server does not answer
    yet. SQLite's "database is locked" is one too (another writer holds it)."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def retry_db(call: Callable[[], T], window_s: float = 60.0, first_wait_s: float = 0.2) -> T:
    """Run ``call`` (one short transaction in its own session) again after a lost connection,
    with back-off 0.2, 0.4 ... 5 s for up to ``window_s``; other errors are raised at once. A
    worker's bookkeeping goes through here, so a database restart delays a shard, never fails
    its job."""
    retryer = tenacity.Retrying(
        stop=tenacity.stop_after_delay(window_s),
        wait=tenacity.wait_exponential(multiplier=first_wait_s, max=5.0),
        retry=tenacity.retry_if_exception(lost_connection),
        before_sleep=lambda state: log.warning(
            "database unavailable (%s); retrying in %.1f s",
            type(state.outcome.exception()).__name__,
            state.next_action.sleep,
        ),
        reraise=True,
    )
    return retryer(call)
