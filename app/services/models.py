"""The models an order can name: store entries described without loading them (the API
process never loads a generator), with how many virtual identities each has left to sell."""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from app.schemas import MODEL_NAME_PATTERN, ModelOut
from app.services.errors import JobError
from jobstore.ledger import free_prototypes
from jobstore.settings import Settings
from model_store import ModelNotFound, list_models
from model_store.description import ModelDescription, describe

MODEL_NAME = re.compile(MODEL_NAME_PATTERN)  # also for the default model and the form


def describe_model(settings: Settings, name: str) -> ModelDescription:
    """The light description of a store entry named in a request (never a path)."""
    if not MODEL_NAME.fullmatch(name):
        raise JobError(
            422, "model", "a model is named by its store name: letters, digits, '.', '_', '-'"
        )
    try:
        return describe(
            name, settings.storage_url, settings.s3_endpoint_url, str(settings.model_cache)
        )
    except ModelNotFound as exc:
        available = ", ".join(e.name for e in list_models() if e.kind == "generator")
        raise JobError(
            422, "model", f"no model named {name!r} (available: {available or 'none'})"
        ) from exc


def model_entries(db: Session, settings: Settings) -> list[ModelOut]:
    """Generators in the store with their free virtual identities (from descriptions: the API
    never loads a generator)."""
    descs = [describe_model(settings, e.name) for e in list_models() if e.kind == "generator"]
    by_ledger: dict[str, list[str]] = {}
    for d in descs:
        by_ledger.setdefault(d.lineage, []).append(d.name)
    return [
        ModelOut(
            name=d.name,
            kind="generator",
            output_size=d.output_size,
            virtual_identities=d.virtual_prototypes,
            free_virtual_identities=free_prototypes(db, d),
            shares_ledger_with=[n for n in by_ledger[d.lineage] if n != d.name],
            card=d.card,
        )
        for d in descs
    ]
