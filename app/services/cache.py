"""A small time-bounded cache for the hot read paths (key -> team, job status).

Status polling is most of the API's traffic; answering a poll from memory for up to a second
keeps its cost near ``/healthz``'s. Writes made through this process clear the caches at once
(cancel, retry, submit, key revocation, sign-out); writes made elsewhere (workers, another API
process, the admin CLI) show within the TTL.
"""

from __future__ import annotations

import threading

import cachetools


class TTLCache:
    """``cachetools.TTLCache`` behind a lock (the API answers from many threads); a TTL of 0
    turns it off."""

    def __init__(self, seconds: float, max_items: int = 10_000):
        self.max_items = max_items
        self._lock = threading.Lock()
        self.seconds = seconds

    @property
    def seconds(self) -> float:
        return self._seconds

    @seconds.setter
    def seconds(self, value: float) -> None:
        with self._lock:
            self._seconds = value
            self._items = cachetools.TTLCache(self.max_items, ttl=value) if value > 0 else None

    def get(self, key):
        with self._lock:
            return None if self._items is None else self._items.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            if self._items is not None:
                self._items[key] = value

    def clear(self) -> None:
        with self._lock:
            if self._items is not None:
                self._items.clear()


# process-wide: auth.revoke_key / end_session clear them wherever they are called from
callers = TTLCache(2.0)  # sha256(key or session token) -> detached Team row
statuses = TTLCache(1.0)  # job id or (team id, listing query) -> (owner team id, JSON bytes)


def configure(auth_seconds: float, status_seconds: float) -> None:
    callers.seconds, statuses.seconds = auth_seconds, status_seconds
    clear()


def clear() -> None:
    callers.clear()
    statuses.clear()
