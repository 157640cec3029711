"""The reconciler thread beside a broker: the database says what must run, the broker only
carries messages that may be lost. Each pass

* puts running shards whose lease expired (worker dead or hung) back on the queue;
* re-sends shards still queued ``resend_after_seconds`` after their last message;
* re-dispatches finalize steps that stalled (lease expired, or never started);
* sweeps the webhook outbox.

How the timeouts relate: a running shard renews its lease after every sampling batch (the
heartbeat), so ``lease_seconds`` only has to exceed one batch, not a whole shard; Celery's
Redis ``visibility_timeout`` is twice the lease, so the broker re-delivers an unacknowledged
message only after the reaper would have re-queued it anyway; claims are conditional updates,
so a duplicate message finds the shard taken and does nothing."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import sessionmaker

from jobstore.settings import Settings
from jobstore.webhooks import deliver_due
from workers.reconcile import requeue_expired, resend_queued, stalled_finalizes

log = logging.getLogger(__name__)


class Reaper(threading.Thread):
    def __init__(self, sessions: sessionmaker, settings: Settings, enqueue_shard, enqueue_finalize):
        super().__init__(name="vigface-reaper", daemon=True)
        self.sessions, self.settings = sessions, settings
        self.enqueue_shard, self.enqueue_finalize = enqueue_shard, enqueue_finalize
        self.every_s = min(60.0, settings.lease_seconds / 4, settings.resend_after_seconds / 2)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            try:
                self.run_once()
            except Exception:
                log.exception("reaper iteration failed")

    def run_once(self) -> None:
        if ids := requeue_expired(self.sessions, self.enqueue_shard):
            log.warning("re-queued shards with expired leases: %s", ids)
        if ids := resend_queued(self.sessions, self.settings, self.enqueue_shard):
            log.warning("re-sent queued shards (message possibly lost): %s", ids)
        for job_id in stalled_finalizes(self.sessions):
            log.warning("re-dispatching the finalize step of job %s", job_id)
            self.enqueue_finalize(job_id)
        deliver_due(self.sessions, self.settings)

    def stop(self) -> None:
        self.stopping.set()
