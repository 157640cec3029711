"""ArcFace with real and virtual identity prototypes."""

from vigface.losses.arcface import PrototypeHead, arcface_logits
from vigface.losses.virtual import VirtualEmbeddingSampler, num_virtual_per_batch

__all__ = ["PrototypeHead", "VirtualEmbeddingSampler", "arcface_logits", "num_virtual_per_batch"]
