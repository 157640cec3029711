"""Celery GPU workers that run dataset-generation shards (issue 5).

Layering: workers call the core package ``vigface`` and ``model_store``; the API in
``app`` enqueues their tasks. Nothing here is imported by the core.
"""
