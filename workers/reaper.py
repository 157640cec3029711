"""A thread that periodically puts shards with expired leases back on the queue and sweeps
the webhook outbox for deliveries whose task message was lost."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import sessionmaker

from workers.runner import requeue_expired
from workers.settings import Settings
from workers.webhooks import deliver_due

log = logging.getLogger(__name__)


class Reaper(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, enqueue_shard, every_s: float):
        super().__init__(name="vigface-reaper", daemon=True)
        self.sessions, self.settings = sessions, settings
        self.enqueue_shard, self.every_s = enqueue_shard, every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                ids = requeue_expired(self.sessions, self.enqueue_shard)
                if ids:
                    log.warning("re-queued shards with expired leases: %s", ids)
                deliver_due(self.sessions, self.settings)
            except Exception:
                log.exception("reaper iteration failed")

    def stop(self) -> None:
        self.stopping.set()
