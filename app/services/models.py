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
    out = []
    for entry in list_models():
        if entry.kind != "generator":
            continue
        desc = describe_model(settings, entry.name)
        out.append(
            ModelOut(
                name=entry.name,
                kind=entry.kind,
                virtual_identities=desc.virtual_prototypes,
                free_virtual_identities=free_prototypes(db, desc),
                card=desc.card,
            )
        )
    return out
