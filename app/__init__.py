"""The service as users meet it: the REST API (api/), the dashboard (ui/), the business rules
both call (services/), the command line (cli/) and a Python client.

Layering: ``vigface`` (core ML) <- ``model_store`` <- ``workers`` <- ``app``.
"""
