"""How a shard's dataset builder is made from its claim: the model (loaded once per process),
the spec the job recorded, the shard's work folder and its key in the object store. The
runner draws with it; the finalize step loads the finished chunks with it."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from jobstore.settings import Settings
from model_store.loader import load_generator
from vigface.dataset.pipeline import DatasetBuilder
from vigface.dataset.spec import DatasetSpec, ResolvedSpec, resolve_spec
from workers.shard_state import Claim

log = logging.getLogger(__name__)


def load_model(settings: Settings, name: str):
    """The process-wide cached generator ``name``, pulled from storage if not local. Every
    caller passes the same arguments, so the API and the worker share one cached copy."""
    return load_generator(
        name, settings.storage_url, settings.s3_endpoint_url, str(settings.model_cache)
    )


def recorded_spec(spec: dict, card: dict) -> ResolvedSpec:
    """The spec a job recorded at admission (resolved there). Jobs stored before admission
    resolved every field are resolved against the card once more, as they always were."""
    try:
        return ResolvedSpec.model_validate(spec)
    except ValidationError:
        log.warning("a job recorded before specs were resolved at admission: resolving it now")
        return resolve_spec(DatasetSpec.model_validate(spec), card)


def shard_builder(settings: Settings, claim: Claim, **kw) -> DatasetBuilder:
    gen = load_model(settings, claim.model)
    spec = recorded_spec(claim.spec, gen.card).model_copy(
        update={
            "identities": claim.identities,
            "seed": claim.spec["seed"] + claim.index,
            # the deployment's independent judge, if it has one (VIGFACE_JUDGE_*)
            "leakage_judge_onnx": settings.leakage_judge_onnx,
            "leakage_judge_gallery": settings.leakage_judge_gallery,
            "leakage_judge_threshold": settings.leakage_judge_threshold,
        }
    )
    return DatasetBuilder(
        gen,
        spec,
        shard_dir(settings, claim.job_id, claim.index),
        candidates=claim.prototypes,
        progress=False,
        compile=settings.sampler_compile,
        precision=settings.sampler_precision,
        **kw,
    )


@lru_cache(maxsize=16)
def _digest(folder: str, mtime: float) -> str:
    from model_store.remote import content_hash

    return content_hash(folder)


def model_digest(settings: Settings, name: str) -> str | None:
    """SHA-256 over the files of the model entry the job drew with (what its dataset card
    names), once per entry version and process."""
    folder = load_model(settings, name).path
    if folder is None:
        return None
    card = folder / "model_card.json"
    return _digest(str(folder), card.stat().st_mtime if card.is_file() else 0.0)


def shard_dir(settings: Settings, job_id: str, index: int) -> Path:
    return Path(settings.work_dir) / job_id / f"shard_{index:05d}"


def shard_key(job_id: str, index: int) -> str:
    return f"work/{job_id}/shard_{index:05d}"
