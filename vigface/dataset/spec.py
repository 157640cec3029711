"""What a dataset order asks for: the validated description the CLI and the service share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from vigface.dataset.writers import FORMATS
from vigface.pose import YAW_BINS, YAW_GROUPS, yaw_group
from vigface.sampler_settings import (
    SamplerChoice,
    SamplerOverrides,
    SamplerSettings,
    pose_guidance_for,
)

LIMITS = {"identities": (1, 100_000), "images_per_identity": (1, 1_000)}


PoseWeight = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class DatasetOrder(SamplerOverrides):
    """What a customer orders. Unknown fields are errors; every bound is checked here; numbers
    and flags are strict (``true`` or ``"2"`` for a number, ``"yes"`` for a flag are refused,
    not coerced) and no number may be NaN or infinite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    identities: StrictInt = Field(
        ge=LIMITS["identities"][0],
        le=LIMITS["identities"][1],
        description="number of identities (classes)",
    )
    images_per_identity: StrictInt = Field(
        ge=LIMITS["images_per_identity"][0],
        le=LIMITS["images_per_identity"][1],
        description="images per identity",
    )
    pose: (
        Annotated[str, Field(max_length=40)]
        | dict[Annotated[str, Field(max_length=40)], PoseWeight]
    ) = Field(
        "match_training",
        description="preset (match_training, frontal, uniform_yaw) or {yaw bin: weight}",
    )
    seed: StrictInt = Field(0, ge=0, lt=2**62, description="seed of every image's noise")
    formats: list[Annotated[str, Field(max_length=20)]] = Field(
        ["imagefolder"],
        max_length=3,
        description="output formats: imagefolder, recordio, webdataset",
    )
    tau_consistency: StrictFloat | None = Field(
        None, ge=-1, le=1, description="min cosine to the own prototype (default: the card's)"
    )
    tau_leak: StrictFloat | None = Field(
        None, ge=-1, le=1, description="max cosine to a real identity (default: the card's)"
    )

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(FORMATS))
        if bad or not v:
            raise ValueError(
                f"formats must be a non-empty subset of {list(FORMATS)}; got {bad or v}"
            )
        return list(dict.fromkeys(v))


class GuidanceNotCalibrated(ValueError):
    """The order's guidance lies outside the weights the model's filters were calibrated at."""


class PoseGuidanceUnsupported(ValueError):
    """pose_guidance other than 1 on a model that never learnt a pose-free branch."""


class FiltersNotCalibrated(ValueError):
    """Neither the order nor the model card gives a filter threshold."""


def consistency_threshold(card: dict, guidance: float) -> float | None:
    """The card's tau_consistency for ``guidance``: linear between the two nearest weights of
    ``filters.tau_consistency_by_guidance``; None when the card has no such table (the single
    ``filters.tau_consistency`` then applies). Raises GuidanceNotCalibrated outside it."""
    table = (card.get("filters") or {}).get("tau_consistency_by_guidance")
    if not table:
        return None
    points = sorted((float(g), float(v["tau_consistency"])) for g, v in table.items())
    lo, hi = points[0][0], points[-1][0]
    if not lo - 1e-9 <= guidance <= hi + 1e-9:
        raise GuidanceNotCalibrated(
            f"this model's filters are calibrated for guidance {lo:g} to {hi:g}; "
            f"{guidance:g} is outside (or give tau_consistency yourself)"
        )
    for (g0, t0), (g1, t1) in zip(points, points[1:], strict=False):
        if g0 <= guidance <= g1:
            return round(t0 + (t1 - t0) * (guidance - g0) / max(g1 - g0, 1e-12), 4)
    return points[0][1]


def pose_thresholds(
    card: dict, guidance: float, base: float, pose_guidance: float = 1.0
) -> dict[str, float] | None:
    """tau_consistency for each bin of :data:`YAW_BINS`, from the card's
    ``filters.tau_consistency_by_pose`` (None when the card has none). ``base`` is the
    threshold the order gets at its ``guidance``; each |yaw| group keeps its calibrated
    distance from the threshold at the guidance the groups were drawn at, so the guidance
    table still moves every group. The groups' table is the one of the order's
    ``pose_guidance``: linear between the two nearest calibrated weights, the nearest one
    outside them. A group the bank lacked takes the nearest calibrated group."""
    filters = card.get("filters") or {}
    tables = filters.get("tau_consistency_by_pose")
    if not tables:
        return None
    weights = sorted((float(w), groups) for w, groups in tables.items())
    gp = min(max(pose_guidance, weights[0][0]), weights[-1][0])
    lo = max((w for w in weights if w[0] <= gp), key=lambda w: w[0])
    hi = min((w for w in weights if w[0] >= gp), key=lambda w: w[0])
    frac = 0.0 if hi[0] == lo[0] else (gp - lo[0]) / (hi[0] - lo[0])
    drawn_at = next(iter(lo[1].values())).get("guidance")
    try:
        ref = consistency_threshold(card, float(drawn_at)) if drawn_at is not None else None
    except GuidanceNotCalibrated:
        ref = None
    if ref is None:
        ref = filters.get("tau_consistency", base)
    calibrated = [g for g in YAW_GROUPS if g in lo[1] and g in hi[1]]
    out = {}
    for name in YAW_BINS:
        group = yaw_group(name)
        if group not in calibrated:
            i = YAW_GROUPS.index(group)
            group = min(calibrated, key=lambda g: abs(YAW_GROUPS.index(g) - i))
        t_lo, t_hi = (float(t[1][group]["tau_consistency"]) for t in (lo, hi))
        tau = base + t_lo + (t_hi - t_lo) * frac - float(ref)
        out[name] = round(min(1.0, max(-1.0, tau)), 4)
    return out


def order_pose_thresholds(
    card: dict,
    guidance: float,
    base: float,
    pose_guidance: float,
    turned_pose_guidance: float | None,
) -> dict[str, float] | None:
    """:func:`pose_thresholds` for an order whose turned bins (:data:`TURNED_GROUPS`) may be
    drawn at a pose guidance of their own: each bin takes the table of the weight it is
    drawn at."""
    tables = {
        gp: pose_thresholds(card, guidance, base, gp)
        for gp in {pose_guidance, pose_guidance_for("35_60", pose_guidance, turned_pose_guidance)}
    }
    if None in tables.values():
        return None
    out = {}
    for name in YAW_BINS:
        gp = pose_guidance_for(yaw_group(name), pose_guidance, turned_pose_guidance)
        out[name] = tables[gp][name]
    return out


class DatasetSpec(DatasetOrder):
    """An order plus how this run executes it (the pipeline's full input)."""

    mode: Literal["virtual", "real_augment"] = "virtual"
    max_attempts: int = Field(3, ge=1, le=20, description="draws per image before giving up")
    batch_size: int = Field(32, ge=1, le=1024)
    gallery: str | None = Field(None, description=".npy of real embeddings to check against")
    face_gate: bool | None = Field(
        None,
        description="redraw images in which a face detector finds no well-placed face "
        "(default: the model card's filters.face_gate)",
    )
    leakage_judge_onnx: str | None = Field(
        None, description="a second FR model (insightface ONNX) the leakage filter also asks"
    )
    leakage_judge_gallery: str | None = Field(
        None, description=".npy of real embeddings by that model"
    )
    leakage_judge_threshold: float | None = Field(
        None, ge=-1, le=1, description="its own leakage threshold"
    )

    @model_validator(mode="after")
    def _judge_complete(self):
        given = [self.leakage_judge_onnx, self.leakage_judge_gallery, self.leakage_judge_threshold]
        if any(g is not None for g in given) and not all(g is not None for g in given):
            raise ValueError(
                "leakage_judge_onnx, leakage_judge_gallery and leakage_judge_threshold go together"
            )
        return self


class ResolvedSpec(SamplerChoice, DatasetSpec):
    """A spec with every sampler setting and filter threshold decided: what the pipeline runs
    and what a job records. Only :func:`resolve_spec` makes one from an order, so the model
    card is read once, at admission, and a job runs the same settings whatever the card says
    later."""

    tau_consistency: StrictFloat = Field(ge=-1, le=1)
    tau_consistency_by_pose: dict[str, StrictFloat] | None = Field(
        None,
        description="each yaw bin's own tau_consistency (from the card's per-pose calibration; "
        "None when the order gave tau_consistency or the card has none)",
    )
    tau_leak: StrictFloat = Field(ge=-1, le=1)
    face_gate: bool

    @field_validator("tau_consistency_by_pose")
    @classmethod
    def _pose_bins(cls, v):
        if v is not None and (set(v) != set(YAW_BINS) or any(not -1 <= t <= 1 for t in v.values())):
            raise ValueError(f"one threshold in [-1, 1] per bin of {YAW_BINS}")
        return v


def resolve_spec(spec: DatasetSpec, card: dict) -> ResolvedSpec:
    """Fill what ``spec`` leaves out from the model card: the sampler settings from its
    ``sampler_defaults`` (over the paper's, :class:`vigface.sampling.SamplerSettings`), the
    consistency threshold calibrated at the order's guidance, ``tau_leak`` from its filters.
    Raises GuidanceNotCalibrated or FiltersNotCalibrated (ValueErrors naming the field)."""
    if isinstance(spec, ResolvedSpec):
        return spec
    recommended = SamplerSettings.for_model(card).model_dump()
    values = spec.model_dump()
    for name, default in recommended.items():
        if values.get(name) is None:
            values[name] = default
    values["guidance_interval"] = tuple(values["guidance_interval"])
    values["pose_guidance"] = float(values["pose_guidance"])
    turned = values.get("turned_pose_guidance")
    values["turned_pose_guidance"] = None if turned is None else float(turned)
    for name in ("pose_guidance", "turned_pose_guidance"):
        if values[name] not in (None, 1.0) and not card.get("pose_drop_prob"):
            raise PoseGuidanceUnsupported(
                f"{name}: this model was trained without pose dropout, so it has no "
                f"pose-free branch to guide against; order {name} 1"
            )
    filters = card.get("filters") or {}
    if values["tau_consistency"] is None:
        by_guidance = consistency_threshold(card, float(values["guidance"]))
        values["tau_consistency"] = (
            by_guidance if by_guidance is not None else filters.get("tau_consistency")
        )
        if values["tau_consistency"] is not None:
            values["tau_consistency_by_pose"] = order_pose_thresholds(
                card,
                float(values["guidance"]),
                float(values["tau_consistency"]),
                values["pose_guidance"],
                values["turned_pose_guidance"],
            )
    if values["tau_leak"] is None:
        values["tau_leak"] = filters.get("tau_leak")
    if values["face_gate"] is None:
        values["face_gate"] = bool(filters.get("face_gate", False))
    missing = [k for k in ("tau_consistency", "tau_leak") if values[k] is None]
    if missing:
        raise FiltersNotCalibrated(
            f"{missing[0]}: the model card has no filter defaults (run `vigface calibrate`) "
            "and the order gives none"
        )
    values["tau_consistency"] = float(values["tau_consistency"])
    values["tau_leak"] = float(values["tau_leak"])
    values["guidance"] = float(values["guidance"])
    return ResolvedSpec.model_validate(values)


THRESHOLDS = ("tau_consistency", "tau_leak", "tau_consistency_by_pose")


def card_thresholds(spec: DatasetSpec, card: dict) -> dict:
    """The filter thresholds the card gives ``spec``'s sampler settings, whatever the order
    set itself: what a run must have used for its drop rate to describe the card's filters."""
    order = spec.model_dump(include=set(DatasetSpec.model_fields))
    resolved = resolve_spec(DatasetSpec.model_validate(order | dict.fromkeys(THRESHOLDS[:2])), card)
    return {k: getattr(resolved, k) for k in THRESHOLDS}


def at_card_thresholds(spec: ResolvedSpec, card: dict) -> bool:
    """Whether a resolved spec runs the card's own thresholds (the order set none). An order
    at a guidance the card has no threshold for (it gave its own tau_consistency) does not."""
    try:
        own = card_thresholds(spec, card)
    except GuidanceNotCalibrated:
        return False
    return {k: getattr(spec, k) for k in THRESHOLDS} == own
