"""Celery tasks: thin wrappers over :mod:`workers.runner` and :mod:`workers.finalize`."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

from celery.signals import worker_init, worker_process_init, worker_shutting_down

from jobstore.session import session_factory
from jobstore.settings import get_settings
from workers.builders import load_model
from workers.celery_app import celery_app
from workers.finalize import finalize_job
from workers.runner import run_next_shard

log = logging.getLogger(__name__)


class WorkerStopping:
    """Set when the Celery worker shuts down (SIGTERM or Ctrl-C: a warm shutdown), read by
    the shard at work in a pool process: the shard goes back to the queue inside its current
    sampling batch instead of running to its end. The main process, which gets the signal,
    leaves a marker file named by its pid; a pool process looks for its parent's (and, in a
    solo pool, its own)."""

    def __init__(self):
        self.here = threading.Event()

    @staticmethod
    def marker(pid: int) -> Path:
        return Path(tempfile.gettempdir()) / f"vigface-worker-stopping-{pid}"

    def set(self) -> None:
        self.here.set()
        self.marker(os.getpid()).touch()

    def clear(self) -> None:
        self.here.clear()
        self.marker(os.getpid()).unlink(missing_ok=True)

    def is_set(self) -> bool:
        return self.here.is_set() or any(
            self.marker(pid).exists() for pid in (os.getpid(), os.getppid())
        )


STOPPING = WorkerStopping()


@worker_init.connect
def _fresh_start(**_) -> None:
    STOPPING.clear()  # a marker a dead worker of the same pid left behind


@worker_shutting_down.connect
def _hand_back(**_) -> None:
    log.warning("worker stopping: the running shard goes back to the queue")
    STOPPING.set()


@lru_cache
def _sessions():
    return session_factory(get_settings().database_url)


@worker_process_init.connect
def _warm_model(**_) -> None:
    """Load the default model in each worker process as it starts (after the fork, so CUDA is
    initialised in the child): the first shard of the first job then starts at once instead of
    after a model load."""
    settings = get_settings()
    try:
        load_model(settings, settings.default_model)
    except Exception:  # a missing default model must not keep the worker from serving others
        log.exception("could not preload model %r", settings.default_model)


@celery_app.task(name="vigface.run_shard", acks_late=True, reject_on_worker_lost=True)
def run_shard_task(shard_id: int) -> str:
    """``shard_id`` says which shard the message was sent for; the worker runs the fairest
    queued shard instead (:func:`workers.runner.run_next_shard`), interleaving teams."""
    return run_next_shard(_sessions(), get_settings(), STOPPING)


@celery_app.task(name="vigface.finalize_job", acks_late=True, reject_on_worker_lost=True)
def finalize_job_task(job_id: str) -> None:
    """Re-runs a finalize that stalled (see ``workers.reconcile.stalled_finalizes``)."""
    finalize_job(_sessions(), get_settings(), job_id)


@celery_app.task(name="vigface.deliver_webhook", bind=True, max_retries=None)
def deliver_webhook_task(self, delivery_id: int) -> str:
    """One attempt; a pending delivery is retried after the outbox's back-off."""
    from jobstore.models import DeliveryStatus, WebhookDelivery
    from jobstore.webhooks import attempt_delivery, backoff

    settings = get_settings()
    status = attempt_delivery(_sessions(), settings, delivery_id)
    if status == DeliveryStatus.PENDING:
        with _sessions()() as db:
            attempts = db.get(WebhookDelivery, delivery_id).attempts
        raise self.retry(countdown=backoff(settings, attempts))
    return status
