"""Loads a store entry once per process (workers keep the model between shards)."""

from __future__ import annotations

from functools import lru_cache

import torch

from model_store import resolve


@lru_cache(maxsize=4)
def load_generator(name: str):
    from vigface.generator.artifact import Generator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = Generator.load(resolve(name), device=device)
    gen.card.setdefault("name", name)
    return gen
