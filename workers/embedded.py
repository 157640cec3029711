"""The embedded worker: a thread in the API process that runs queued shards one by one.

It polls the database (the source of truth) instead of a broker, so the single-machine mode
needs neither Redis nor Celery; a shard whose lease expired is picked up again. ``stop()``
(Ctrl-C or SIGTERM of the service) lets the running shard give its lease back at its next
sampling batch, so the next start goes on with it at once.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import sessionmaker

from jobstore.settings import Settings
from jobstore.webhooks import deliver_due
from workers.finalize import finalize_job
from workers.reconcile import next_queued_shard, stalled_finalizes
from workers.runner import run_shard

log = logging.getLogger(__name__)


class EmbeddedWorker(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, poll_s: float = 1.0):
        super().__init__(name="vigface-embedded-worker", daemon=True)
        self.sessions, self.settings, self.poll_s = sessions, settings, poll_s
        self.stopping = threading.Event()

    def run_once(self) -> bool:
        """Deliver due webhooks, finish stalled finalize steps (a restart mid-finalize), then
        run one queued shard; False when there was none."""
        deliver_due(self.sessions, self.settings)
        for job_id in stalled_finalizes(self.sessions):
            finalize_job(self.sessions, self.settings, job_id)
        with self.sessions() as db:
            shard_id = next_queued_shard(db)
        if shard_id is None:
            return False
        run_shard(self.sessions, self.settings, shard_id, stopping=self.stopping)
        return True

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self.run_once():
                    self.stopping.wait(self.poll_s)
            except Exception:  # keep serving; the shard/job rows say what failed
                log.exception("embedded worker iteration failed")
                self.stopping.wait(self.poll_s)

    def stop(self, wait_s: float = 120.0) -> None:
        """Stop after the current sampling batch (the shard goes back to the queue); waits up
        to ``wait_s`` for the thread (a finalize step under way is not interrupted)."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(wait_s)
