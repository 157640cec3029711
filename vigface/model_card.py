"""A generator's model card: what the code reads of a model, typed and validated on load.

``<entry>/model_card.json`` holds provenance (what it was trained on, how, the commands that
reproduce it), the resolution it draws at, the sampler settings orders get by default, the
filters' calibration, the outside judge's calibration on real people, and the sample grids.
Measurements and their history (tables, probes, notes) live beside it in
``<entry>/measurements/*.json``: people read them, no code does. A card with a key this model
does not know fails to load with the key named, so a measurement cannot creep back into what
the code reads; :func:`migrate_card` moves such keys of an older card into ``measurements/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vigface.atomic import atomic_write_text
from vigface.sampler_settings import SamplerSettings

CARD_FILE = "model_card.json"
MEASUREMENTS_DIR = "measurements"


class ModelCardError(ValueError):
    """A model card that does not validate; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GuidanceCalibration(_Strict):
    """The consistency threshold drawn at one guidance weight (``vigface calibrate-guidance``)."""

    tau_consistency: float = Field(ge=-1, le=1)
    cos_own_p50: float | None = None
    images: int | None = None


class PoseGroupCalibration(GuidanceCalibration):
    """The consistency threshold drawn at the poses of one |yaw| group (``vigface calibrate``),
    at the guidance weights it names."""

    guidance: float | None = None
    pose_guidance: float | None = None
    shown_in_group: float | None = Field(
        None, description="share of the draws whose pixels show this |yaw| group"
    )
    shown_mean_abs_yaw: float | None = Field(None, description="their mean shown |yaw|")


class DropRate(_Strict):
    """How often the filters dropped an identity in a real run at the card's thresholds
    (``vigface calibrate-drops``); admission sizes spares from it (``vigface.dataset.spares``)."""

    per_image_failure: float = Field(ge=0, lt=1)
    identities_drawn: int = Field(ge=1, description="slots plus replacements")
    identities_dropped: int = Field(ge=0)
    images_per_identity: int = Field(ge=1)
    settings: dict = Field(default_factory=dict, description="the run's sampler settings")
    measured_on: str = Field("", description="the run's folder when it was recorded")


class FilterCalibration(_Strict):
    """The privacy filter's thresholds (``vigface calibrate``) and what they were drawn from."""

    tau_leak: float = Field(ge=-1, le=1)
    tau_consistency: float = Field(ge=-1, le=1)
    face_gate: bool = Field(
        False, description="images must show a well-placed face to a standard detector"
    )
    face_rate: float | None = Field(
        None, ge=0, le=1, description="share of calibration draws the detector passed"
    )
    tau_consistency_by_guidance: dict[str, GuidanceCalibration] = Field(default_factory=dict)
    tau_consistency_by_pose: dict[str, dict[str, PoseGroupCalibration]] = Field(
        default_factory=dict,
        description="per pose guidance weight, then per |yaw| group: frontal, 15_35, 35_60, 60+",
    )

    @field_validator("tau_consistency_by_pose")
    @classmethod
    def _pose_groups(cls, v):
        from vigface.pose import YAW_GROUPS

        for weight, groups in v.items():
            try:
                float(weight)
            except ValueError:
                raise ValueError(f"{weight!r} is not a pose guidance weight") from None
            unknown = sorted(set(groups) - set(YAW_GROUPS))
            if unknown:
                raise ValueError(f"unknown |yaw| groups {unknown}; groups are {YAW_GROUPS}")
        return v

    drop_rate: DropRate | None = Field(
        None, description="measured after the thresholds; recalibrating them clears it"
    )
    drop_rate_by_pose: dict[str, DropRate] | None = Field(
        None,
        description="the same, measured on runs whose every image asked one |yaw| group, by "
        "group: turned faces are dropped more often than frontal ones",
    )
    real_nearest_negative: dict | None = Field(
        None, description="how close real people come to other real identities (a summary)"
    )
    calibration: dict | None = Field(None, description="the settings it was drawn with")


class JudgeCalibration(_Strict):
    """Real held-out people's figures under the outside judge, at the generator's resolution
    (``real``) and others (``real_at``); reports compare every delivered set with them."""

    name: str | None = None
    resolution: int | None = None
    real: dict | None = None
    real_at: dict[str, dict] = Field(default_factory=dict)


class JudgeCapacity(_Strict):
    """The largest population of delivered identities that the outside judge finds as distinct
    as real people (``bench/judge_capacity.py --card``; the rule is in
    :mod:`vigface.evaluation.capacity`). The whole curve is in ``measurements/``."""

    judge: str
    identities: int = Field(ge=0, description="the capacity read off the curve")
    measured_up_to: int = Field(ge=1, description="the largest population measured")
    bounded: bool = Field(description="a measured population failed (else: at least this)")
    images_per_identity: int = Field(ge=1)
    real_resolution: int = Field(ge=1)
    tolerance_sigmas: float = Field(gt=0)
    measured_on: str = Field(description="the store entry the faces were drawn from")
    figure: str | None = Field(None, description="the curve, a PNG inside the entry")


class Capacity(_Strict):
    """How many virtual identities the model holds and the bounds they were placed under
    (``vigface extend-virtual``): every row's cosine to a real prototype is at most
    ``max_real_cos`` and to another virtual one at most ``max_virtual_cos``; and how many of
    them an outside judge still finds as distinct as real people (``judge``)."""

    virtual_identities: int = Field(ge=0)
    max_real_cos: float | None = None
    max_virtual_cos: float | None = None
    subspace_dims: int | None = None
    extensions: list[dict] = Field(default_factory=list, description="each run's counts")
    judge: JudgeCapacity | None = None


class DataSource(_Strict):
    """A dataset a model (or a part of it) was trained on, and the terms it came under."""

    name: str = Field(min_length=1, description="e.g. LFW (deep-funneled), aligned to 112 px")
    url: str | None = None
    used_for: list[str] = Field(
        min_length=1, description="which parts learnt from it: fr, generator, autoencoder"
    )
    license: str = Field(
        min_length=1, description="an SPDX id, or 'other' with the terms spelled out below"
    )
    terms: str = Field(min_length=1, description="what its distributor allows, in words")
    research_only: bool = Field(description="its terms allow research use only")
    people: str | None = Field(None, description="who it shows (real people: say so)")


class Terms(_Strict):
    """What a team may do with this model's weights and with the datasets it delivers. A
    dataset's terms can never be wider than its model's training data allow: with any
    research-only source, deliveries are research-only whatever this says."""

    weights_license: str = Field(min_length=1)
    weights_terms: str = Field(min_length=1)
    datasets_license: str = Field(min_length=1, description="SPDX id, or 'other'")
    datasets_terms: str = Field(min_length=1)


class ModelCard(_Strict):
    kind: Literal["generator"] = "generator"
    name: str = ""
    training_data: list[DataSource] = Field(
        default_factory=list,
        description="every dataset the FR model, generator and "
        "autoencoder learnt from (required to add the model to a store)",
    )
    terms: Terms | None = Field(None, description="required to add the model to a store")
    # provenance
    train_data: str | None = None
    fr_model: str | None = None
    init_from: str | None = None
    num_real: int | None = None
    num_virtual: int | None = None
    virtual_identity_fraction: float | None = None
    virtual_identity_holdout: float | None = None
    dit_parameters: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    train_minutes: float | None = None
    device: str | None = None
    precision: str | None = None
    reproduce: list[str] = Field(default_factory=list)
    fr_card: dict = Field(default_factory=dict, description="stage 1's own card, as trained")
    # what orders and reports read
    sample_size: int | None = Field(None, description="the side the DiT draws at, in pixels")
    prediction_type: Literal["v_prediction", "sample"] | None = Field(
        None, description="what the DiT predicts (its scheduler/ folder says the same)"
    )
    pose_drop_prob: float | None = Field(
        None, description="landmark dropout in training: > 0 lets orders set pose_guidance"
    )
    pose_balance: float | None = Field(
        None, description="training draws weighted (images in their |yaw| bin)^-pose_balance"
    )
    pose_embedding: bool | None = Field(
        None, description="the DiT also adds the landmark coordinates to its condition"
    )
    latent: bool | None = Field(
        None, description="the DiT draws in the latent space of the entry's autoencoder/"
    )
    autoencoder: dict | None = Field(
        None, description="the face autoencoder's own card (what it was trained on, how)"
    )
    sampler_defaults: SamplerSettings | None = None
    filters: FilterCalibration | None = None
    judge: JudgeCalibration | None = None
    upsampler: dict | None = Field(None, description="the cascade stage, when attached")
    capacity: Capacity | None = None
    shown_pose_reference: dict | None = Field(
        None, description="per yaw bin, what real faces asked for it show (vigface calibrate-pose)"
    )
    grids: dict[str, str] = Field(default_factory=dict)
    grid_note: str | None = None
    prototype_set: str | None = Field(None, description="digest of W_V, set when loaded")


def missing_terms(card: dict) -> str | None:
    """Why a card cannot be added to a store, or None: it must say what the model learnt from
    (every source with its terms) and what its weights and datasets may be used for."""
    if not card.get("training_data"):
        return "the card names no training data (training_data: each source and its terms)"
    if not card.get("terms"):
        return "the card states no terms for the weights and the datasets (terms)"
    try:
        [DataSource.model_validate(d) for d in card["training_data"]]
        Terms.model_validate(card["terms"])
    except ValidationError as exc:
        e = exc.errors()[0]
        return f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
    return None


def delivery_terms(card: dict) -> dict:
    """The terms of the datasets a model delivers: its card's, made research-only (license
    'other') whenever a training source is research-only, whatever the card claims."""
    terms = card.get("terms") or {}
    sources = card.get("training_data") or []
    # no stated terms (a model trained before terms were recorded): nothing wider is known
    research_only = any(s.get("research_only") for s in sources) or not terms
    license_id = terms.get("datasets_license", "other")
    text = terms.get("datasets_terms", "not stated by the model card")
    if research_only and license_id != "other":
        license_id = "other"
        text = "Research use only (the model learnt from research-only data). " + text
    return {
        "license": license_id,
        "terms": text,
        "research_only": research_only,
        "sources": [s.get("name") for s in sources],
    }


def validate_card(data: dict, source: str | Path = "model card") -> dict:
    """``data`` checked against :class:`ModelCard`, as the plain dict the code passes around
    (unset fields left out). Raises ModelCardError naming ``source`` and each bad field."""
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(card)'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelCardError(
            f"{source}: {problems} (a card written before measurements moved out: "
            "`vigface models migrate-card ENTRY`)"
        ) from exc
    return card.model_dump(mode="json", exclude_none=True)


def load_card(entry: str | Path) -> dict:
    """The validated card of a generator entry; ``{}`` when it has none."""
    path = Path(entry) / CARD_FILE
    if not path.is_file():
        return {}
    return validate_card(json.loads(path.read_text()), path)


FR_HISTORY = ("virtual_refit_history", "virtual_refit")


def card_json(card: dict) -> str:
    """A card as JSON for people to read: indented, with every list or object of plain values
    on one line (a judge calibration's hundreds of image counts would fill a screen each)."""

    def encode(value, depth: int) -> str:
        flat = not isinstance(value, (dict, list)) or all(
            not isinstance(v, (dict, list))
            for v in (value.values() if isinstance(value, dict) else value)
        )
        if flat:
            return json.dumps(value)
        pad, inner = "  " * depth, "  " * (depth + 1)
        if isinstance(value, dict):
            items = [f"{inner}{json.dumps(k)}: {encode(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        items = [f"{inner}{encode(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"

    return encode(card, 0) + "\n"


def write_card(entry: str | Path, card: dict) -> None:
    """Validate ``card`` and write it as ``<entry>/model_card.json`` (atomically): a card that
    would not load is never written."""
    path = Path(entry) / CARD_FILE
    validate_card(card, path)
    atomic_write_text(path, card_json({k: v for k, v in card.items() if v is not None}))


def update_card(entry: str | Path, **sections) -> dict:
    """Set top-level ``sections`` of an entry's card, validate, write; returns the card."""
    path = Path(entry) / CARD_FILE
    card = json.loads(path.read_text()) if path.is_file() else {}
    card.update(sections)
    write_card(entry, card)
    return card


def write_measurement(entry: str | Path, name: str, value) -> Path:
    """``<entry>/measurements/<name>.json``: a figure for people, which no code reads."""
    path = Path(entry) / MEASUREMENTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")
    return path


def split_card(data: dict) -> tuple[dict, dict[str, object]]:
    """(what :class:`ModelCard` holds, the rest by measurement name). Nested sections keep
    their known keys; their unknown ones become ``<section>.<key>`` measurements."""
    sections = {"filters": FilterCalibration, "judge": JudgeCalibration}
    card, rest = {}, {}
    for key, value in data.items():
        if key not in ModelCard.model_fields:
            rest[key] = value
        elif key in sections and isinstance(value, dict):
            known = sections[key].model_fields
            card[key] = {k: v for k, v in value.items() if k in known}
            rest |= {f"{key}.{k}": v for k, v in value.items() if k not in known}
        elif key == "upsampler" and isinstance(value, dict) and "measured" in value:
            card[key] = {k: v for k, v in value.items() if k != "measured"}
            rest["upsampler.measured"] = value["measured"]
        elif key == "fr_card" and isinstance(value, dict):  # its history stays in fr/
            card[key] = {k: v for k, v in value.items() if k not in FR_HISTORY}
            rest |= {f"fr_card.{k}": v for k, v in value.items() if k in FR_HISTORY}
        else:
            card[key] = value
    return card, rest


def migrate_card(entry: str | Path) -> list[str]:
    """Move every key of ``<entry>/model_card.json`` that the code does not read into
    ``<entry>/measurements/<key>.json`` and keep the typed rest. Idempotent; returns the
    names moved. A measurement file already there is never overwritten."""
    entry = Path(entry)
    path = entry / CARD_FILE
    data = json.loads(path.read_text())
    if data.get("recommended_guidance") is not None:  # folded into the sampler defaults
        data.setdefault("sampler_defaults", {}).setdefault("guidance", data["recommended_guidance"])
    data.pop("recommended_guidance", None)
    card, rest = split_card(data)
    validate_card(card, path)  # the typed rest must load before anything is written
    for name in rest:
        target = entry / MEASUREMENTS_DIR / f"{name}.json"
        if target.exists():
            raise ModelCardError(f"{target} exists; move it away before migrating again")
    for name, value in rest.items():
        write_measurement(entry, name, value)
    write_card(entry, card)
    return sorted(rest)
