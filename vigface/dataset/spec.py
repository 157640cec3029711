"""What a dataset order asks for: the validated description the CLI and the service share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vigface.dataset.writers import FORMATS

LIMITS = {
    "identities": (1, 100_000),
    "images_per_identity": (1, 1_000),
    "guidance": (0.0, 20.0),
    "steps": (1, 200),
}


class DatasetOrder(BaseModel):
    """What a customer orders. Unknown fields are errors; every bound is checked here."""

    model_config = ConfigDict(extra="forbid")

    identities: int = Field(
        ge=LIMITS["identities"][0],
        le=LIMITS["identities"][1],
        description="number of identities (classes)",
    )
    images_per_identity: int = Field(
        ge=LIMITS["images_per_identity"][0],
        le=LIMITS["images_per_identity"][1],
        description="images per identity",
    )
    pose: str | dict[str, float] = Field(
        "match_training",
        description="preset (match_training, frontal, uniform_yaw) or {yaw bin: weight}",
    )
    guidance: float = Field(
        4.0,
        ge=LIMITS["guidance"][0],
        le=LIMITS["guidance"][1],
        description="classifier-free guidance weight g",
    )
    steps: int = Field(
        25, ge=LIMITS["steps"][0], le=LIMITS["steps"][1], description="sampler steps"
    )
    scheduler: Literal["dpmsolver", "ddim"] = Field("dpmsolver", description="sampler")
    seed: int = Field(0, ge=0, lt=2**62, description="seed of every image's noise")
    formats: list[str] = Field(
        ["imagefolder"], description="output formats: imagefolder, recordio, webdataset"
    )
    tau_consistency: float | None = Field(
        None, ge=-1, le=1, description="min cosine to the own prototype (default: the card's)"
    )
    tau_leak: float | None = Field(
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


class DatasetSpec(DatasetOrder):
    """An order plus how this run executes it (the pipeline's full input)."""

    mode: Literal["virtual", "real_augment"] = "virtual"
    max_attempts: int = Field(3, ge=1, le=20, description="draws per image before giving up")
    batch_size: int = Field(32, ge=1, le=1024)
    gallery: str | None = Field(None, description=".npy of real embeddings to check against")
    judge_onnx: str | None = Field(None, description="independent FR model (ONNX) for leakage")
    judge_gallery: str | None = Field(None, description=".npy of real embeddings by the judge")
    judge_threshold: float | None = Field(None, ge=-1, le=1, description="the judge's own")

    @model_validator(mode="after")
    def _judge_complete(self):
        given = [self.judge_onnx, self.judge_gallery, self.judge_threshold]
        if any(g is not None for g in given) and not all(g is not None for g in given):
            raise ValueError("judge_onnx, judge_gallery and judge_threshold go together")
        return self
