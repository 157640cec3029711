"""Celery for the GPU workers, configured the way Celery advises for long GPU tasks.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a shard is acknowledged only when it
  finished, and re-delivered if the worker process dies mid-shard;
* ``worker_prefetch_multiplier = 1``: a worker holds one shard at a time;
* ``visibility_timeout`` above the longest shard, so Redis does not re-deliver a shard that is
  still running (the database lease guards against double work anyway);
* one process per GPU (``--concurrency 1``, one worker per device) and the model loaded lazily
  inside the task's process after the fork, at process start (``workers.tasks``), never
  before the fork (``model_store.loader`` caches it there).
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from jobstore.settings import Settings, get_settings


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("vigface", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="gpu",
        task_routes={
            "vigface.run_shard": {"queue": "gpu"},
            "vigface.finalize_job": {"queue": "gpu"},
            "vigface.deliver_webhook": {"queue": "webhooks"},
        },
        # a re-delivered message of a shard still at work finds its lease held and returns
        broker_transport_options={"visibility_timeout": max(settings.lease_seconds * 2, 3600)},
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


celery_app = make_celery()


class CeleryDispatch:
    """How the API and the reaper hand work to Celery workers: by task name, so nothing here
    imports the tasks (or torch)."""

    def __init__(self, settings: Settings):
        self.celery = make_celery(settings)

    def enqueue_shard(self, shard_id: int, priority: int = 5) -> None:
        self.celery.send_task("vigface.run_shard", args=[shard_id], queue="gpu", priority=priority)

    def enqueue(self, job) -> None:
        """Every shard of a newly admitted job."""
        for shard in job.shards:
            self.enqueue_shard(shard.id, job.priority)

    def enqueue_finalize(self, job_id: str) -> None:
        self.celery.send_task("vigface.finalize_job", args=[job_id], queue="gpu")

    def deliver_webhook(self, delivery_id: int) -> None:
        self.celery.send_task("vigface.deliver_webhook", args=[delivery_id], queue="webhooks")


def webhook_sender(settings: Settings):
    """The ``deliver`` callable of :func:`jobstore.webhooks.notify`: a Celery task where there
    is a broker; none embedded (the worker thread sweeps the outbox)."""
    return _dispatch(settings.broker_url).deliver_webhook if settings.broker_url else None


@lru_cache
def _dispatch(broker_url: str) -> CeleryDispatch:
    return CeleryDispatch(get_settings().model_copy(update={"broker_url": broker_url}))
