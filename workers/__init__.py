"""What runs jobs: the job store, the identity ledger, the shard runner (Celery GPU workers or
the embedded worker thread), the reaper and the webhook outbox.

Layering: workers call the core package ``vigface`` and ``model_store``; the API in
``app`` enqueues their tasks. Nothing here is imported by the core.
"""
