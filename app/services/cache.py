"""A small time-bounded cache for the hot read paths (key -> team, job status).

Status polling is most of the API's traffic; answering a poll from memory for up to a second
keeps its cost near ``/healthz``'s. Writes made through this process clear the caches at once
(cancel, retry, submit, key revocation, sign-out); writes made elsewhere (workers, another API
process, the admin CLI) show within the TTL.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class TTLCache:
    def __init__(self, seconds: float, max_items: int = 10_000):
        self.seconds, self.max_items = seconds, max_items
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        if self.seconds <= 0:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None
            return hit[1]

    def put(self, key, value) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + self.seconds, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
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
