"""The sampler's settings, kept free of torch so that the API process (which never loads a
model) can validate orders and read model cards. :mod:`vigface.sampling` draws with them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplerSettings(BaseModel):
    """How faces are drawn: the one place the paper's sampler lives (g 4, 25 DPM-Solver++
    steps, guidance at every step, no upsampler). A model card's ``sampler_defaults`` is a
    SamplerSettings measured for its weights, and an order's own fields override the card's;
    :func:`vigface.dataset.spec.resolve_spec` applies both, once, when an order is admitted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    guidance: float = Field(4.0, ge=0, le=20, description="classifier-free guidance weight g")
    steps: int = Field(25, ge=1, le=200, description="sampler steps")
    scheduler: Literal["dpmsolver", "unipc", "ddim"] = Field(
        "dpmsolver", description="sampler: dpmsolver, unipc or ddim"
    )
    guidance_interval: tuple[float, float] = Field(
        (0.0, 1.0),
        description="apply guidance only while t/T lies between lo and hi (1 = pure noise); "
        "0 and 1 = every step",
    )
    upsample: bool = Field(
        False, description="run the model's upsampler (32 -> 64 px) after the DiT"
    )
    pose_guidance: float = Field(
        1.0,
        ge=0,
        le=20,
        description="guidance weight of the pose (landmarks) apart from the identity's; 1 = "
        "pose as conditioned, above 1 turns faces further toward the asked pose (needs a model "
        "trained with pose dropout)",
    )

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v):
        if not 0 <= v[0] <= v[1] <= 1:
            raise ValueError("guidance_interval must be [lo, hi] with 0 <= lo <= hi <= 1")
        return v

    @classmethod
    def for_model(cls, card: dict) -> SamplerSettings:
        """The settings a model card recommends (its ``sampler_defaults``), over the paper's."""
        given = card.get("sampler_defaults") or {}
        return cls(**{k: v for k, v in given.items() if v is not None})


PAPER_SAMPLER = SamplerSettings()
