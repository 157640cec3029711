"""Loads a store entry once per process (workers keep the model between shards).

A name that is not a local entry is pulled from the object store's model registry
(``vigface models push``) into a local cache first, by content hash.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from model_store import ModelNotFound, resolve


def locate(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | None = None,
) -> Path:
    try:
        return resolve(name)
    except ModelNotFound:
        if not storage_url:
            raise
    from model_store.remote import pull
    from model_store.storage import open_store

    store = open_store(storage_url, endpoint_url)
    try:
        return pull(store, name, cache or Path.home() / ".cache" / "vigface" / "models")
    except Exception as exc:  # a missing key raises differently per backend
        raise ModelNotFound(f"model {name!r} is neither local nor in {storage_url}: {exc}") from exc


@lru_cache(maxsize=4)
def load_generator(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | None = None,
):
    from vigface.generator.artifact import Generator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = Generator.load(locate(name, storage_url, endpoint_url, cache), device=device)
    gen.card.setdefault("name", name)
    return gen
