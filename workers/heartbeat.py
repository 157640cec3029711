"""Leases kept alive by a heartbeat thread while a step works.

A shard or finalize step holds a lease in the database; the reaper takes over a step whose
lease expired (its worker died). Renewing only between sampling batches or while an upload
retries left long stretches (model loading, merging, a slow object store) in which a live
step's lease ran out and a second worker started the same step beside it. The heartbeat renews
every third of the lease for as long as the step runs, so the lease can be short (a dead
worker's step is taken over within ``lease_seconds``) without ever expiring under a live one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def heartbeat(renew: Callable[[], None], lease_seconds: float) -> Iterator[None]:
    """Call ``renew`` every ``lease_seconds / 3`` until the block ends. A failed renewal (the
    database briefly away) is logged and tried again at the next beat."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_seconds / 3):
            try:
                renew()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("lease renewal failed; retrying at the next beat", exc_info=True)

    thread = threading.Thread(target=beat, name="vigface-lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
