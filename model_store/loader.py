"""Loads a store entry once per process (workers keep the model between shards).

A name that is not a local entry is pulled from the object store's model registry
(``vigface models push``) into a local cache first, by content hash. The API never calls this:
it validates orders from ``model_store.description``.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from model_store.description import locate
from vigface.prototype_set import prototype_set_digest


def open_generator(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | None = None,
    device: str | None = None,
):
    """A generator by store name or folder, pulled from the registry when it is not local:
    the one way the CLI and the workers load one (the workers through the cache below)."""
    from vigface.generator.artifact import Generator

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = Generator.load(locate(name, storage_url, endpoint_url, cache), device=device)
    gen.card.setdefault("name", name)
    # what the ledger sold it as (computed once per load; workers compare it with each job's)
    gen.card["prototype_set"] = prototype_set_digest(gen.fr.virtual_prototypes.cpu().numpy())
    return gen


@lru_cache(maxsize=4)
def load_generator(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | None = None,
):
    """:func:`open_generator`, once per process for the same arguments (workers keep the model
    between shards)."""
    return open_generator(name, storage_url, endpoint_url, cache)
