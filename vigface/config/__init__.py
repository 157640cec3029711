"""Typed YAML configs. Unknown keys are errors, so a typo never silently trains the default.

The models live in :mod:`vigface.config.fr` (stage 1) and :mod:`vigface.config.generator`
(stage 2, upsampler, autoencoder); this module reads a YAML file into one of them.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from vigface.config.fr import (  # noqa: F401 - re-exported
    AugmentConfig,
    BackboneConfig,
    DataConfig,
    HeadConfig,
    OptimConfig,
    TrainFRConfig,
)
from vigface.config.generator import (  # noqa: F401 - re-exported
    AutoencoderModelConfig,
    DiffusionConfig,
    DiTModelConfig,
    TrainAutoencoderConfig,
    TrainDiTConfig,
    TrainUpsamplerConfig,
    UpsamplerModelConfig,
)


class ConfigError(ValueError):
    """A config file is missing, not YAML, or fails validation; the message names the key."""


def load_config(path: str | Path, model: type[BaseModel] = TrainFRConfig, overrides=None):
    """Read a YAML file into ``model``; ``overrides`` is a dict merged on top (dotted keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from exc


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with YAML typing of the values."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out
