"""The service layer: command line now, the REST API and dashboard later.

Layering: ``vigface`` (core ML) <- ``model_store`` <- ``workers`` <- ``app``.
"""
