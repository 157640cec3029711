"""The sampler's settings, kept free of torch so that the API process (which never loads a
model) can validate orders and read model cards. :mod:`vigface.sampling` draws with them.

:class:`SamplerSettings` is the one declaration of every sampler field (type, bounds,
description, the paper's default). An order's optional overrides
(:class:`SamplerOverrides`, every field ``None`` = the model card's) and a resolved job's
required fields (:class:`SamplerChoice`) are derived from it, so a bound changes in one
place.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vigface.pose import TURNED_GROUPS


def check_guidance_interval(v: tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` in ``t / T``: ``0 <= lo <= hi <= 1``."""
    if v is not None and not 0 <= v[0] <= v[1] <= 1:
        raise ValueError("guidance_interval must be [lo, hi] with 0 <= lo <= hi <= 1")
    return v


GUIDANCE_RANGE = (0.0, 20.0)  # any guidance weight the sampler takes (a card narrows it)
STEPS_RANGE = (1, 200)
GuidanceInterval = Annotated[tuple[float, float], AfterValidator(check_guidance_interval)]
GuidanceWeight = Annotated[StrictFloat, Field(ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])]
Steps = Annotated[StrictInt, Field(ge=STEPS_RANGE[0], le=STEPS_RANGE[1])]


class SamplerSettings(BaseModel):
    """How faces are drawn: the one place the paper's sampler lives (g 4, 25 DPM-Solver++
    steps, guidance at every step, no upsampler). A model card's ``sampler_defaults`` is a
    SamplerSettings measured for its weights, and an order's own fields override the card's;
    :func:`vigface.dataset.spec.resolve_spec` applies both, once, when an order is admitted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    guidance: GuidanceWeight = Field(4.0, description="classifier-free guidance weight g")
    steps: Steps = Field(25, description="sampler steps")
    scheduler: Literal["dpmsolver", "unipc", "ddim"] = Field(
        "dpmsolver", description="sampler: dpmsolver, unipc or ddim"
    )
    timestep_spacing: Literal["trailing", "leading", "linspace"] = Field(
        "trailing",
        description="where the solver's steps lie: trailing starts from pure noise (t = T), "
        "where training put it; leading (what the models' saved schedulers say) starts at "
        "t = 0.9 T with 10 steps, so the first step reads noise as a face with 15 % signal "
        "(a colour cast); linspace spreads the steps from T to 0 evenly",
    )
    guidance_interval: GuidanceInterval = Field(
        (0.0, 1.0),
        description="apply guidance only while t/T lies between lo and hi (1 = pure noise); "
        "0 and 1 = every step",
    )
    upsample: StrictBool = Field(
        False, description="run the model's upsampler (32 -> 64 px) after the DiT"
    )
    pose_guidance: GuidanceWeight = Field(
        1.0,
        description="guidance weight of the pose (landmarks) apart from the identity's; 1 = "
        "pose as conditioned, above 1 turns faces further toward the asked pose (needs a model "
        "trained with pose dropout)",
    )

    turned_pose_guidance: GuidanceWeight | None = Field(
        None,
        description="pose guidance for the images asked at |yaw| 35 degrees or more (a model "
        "that shows frontal faces best at 1 may need more to turn a head that far); null = "
        "pose_guidance for every image",
    )

    negative_neighbours: Annotated[StrictInt, Field(ge=0, le=64)] = Field(
        0,
        description="guide away from other identities (NegFaceDiff): the unconditional branch "
        "is conditioned on the mean of this many nearest other virtual prototypes; 0 = the "
        "null condition, as in the paper",
    )

    @classmethod
    def for_model(cls, card: dict) -> SamplerSettings:
        """The settings a model card recommends (its ``sampler_defaults``), over the paper's."""
        given = card.get("sampler_defaults") or {}
        return cls(**{k: v for k, v in given.items() if v is not None})


def pose_guidance_for(
    group: str, pose_guidance: float, turned_pose_guidance: float | None
) -> float:
    """The pose guidance an image asked in |yaw| ``group`` (:data:`vigface.pose.YAW_GROUPS`)
    is drawn at."""
    if turned_pose_guidance is not None and group in TURNED_GROUPS:
        return float(turned_pose_guidance)
    return float(pose_guidance)


# Fields added after jobs were stored, with the value those jobs were drawn with: a stored job
# without the field resumes as it began (its shards match), new orders take the card's.
STORED_BEFORE = {"timestep_spacing": "leading"}


def _derived(name: str, optional: bool) -> type[BaseModel]:
    fields = {}
    for key, info in SamplerSettings.model_fields.items():
        if optional:
            extra = " (default: the model card's)"
            if key == "upsample":
                extra = " (default: the model card's; a model without one refuses true)"
            field = FieldInfo.merge_field_infos(
                info, default=None, description=info.description + extra
            )
            fields[key] = (info.annotation | None, field)
        else:  # decided: required, except where null is itself a setting (it then defaults)
            fields[key] = (
                info.annotation,
                FieldInfo.merge_field_infos(
                    info,
                    default=STORED_BEFORE.get(
                        key, None if info.default is None else PydanticUndefined
                    ),
                ),
            )
    return create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


SamplerOverrides = _derived("SamplerOverrides", optional=True)
SamplerOverrides.__doc__ = "An order's sampler fields: each None takes the model card's."
SamplerChoice = _derived("SamplerChoice", optional=False)
SamplerChoice.__doc__ = "A resolved job's sampler fields: every one decided."

PAPER_SAMPLER = SamplerSettings()
