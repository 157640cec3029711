"""The service's state: settings, tables and migrations, sessions, the identity ledger and the
webhook outbox.

Layering: ``vigface`` <- ``model_store`` <- ``jobstore`` <- ``workers`` <- ``app``. The job
store reads model descriptions from ``model_store`` and nothing above it: the workers and
the API both build on it, and hand it what it must not know (how a webhook is queued for
delivery, how a shard is enqueued) as callables.
"""
