"""Download links for stored objects.

An S3 store presigns its own links; a local folder has none, so its objects are served by the
API's ``/files/<key>`` route (which checks the caller) under the service's public address.
"""

from __future__ import annotations

from collections.abc import Callable

from jobstore.settings import Settings
from model_store.storage import ObjectStore


def plain_link(settings: Settings) -> Callable[[str], str]:
    base = settings.base_url.rstrip("/")
    return lambda key: f"{base}/files/{key}"


def download_link(store: ObjectStore, settings: Settings, key: str) -> str:
    return store.link(key, plain_link(settings))
