"""What runs jobs: the shard runner (Celery GPU workers or the embedded worker thread), the
finalize step, the reaper and the reconciler's queries.

Layering: workers build on the job store (``jobstore``), the model store and the core package
``vigface``; the API in ``app`` enqueues their tasks. Nothing below imports them.
"""
