"""The identity of a set of virtual prototypes, independent of where and how it is stored.

The service sells rows of W_V. Two model folders (a store name, a copy under another path, a
re-push, an fp16 bundle of fp32 weights) that hold the same W_V must share one ledger, so the
ledger is keyed by this digest rather than by a name: SHA-256 over the shape and the
L2-normalised rows of W_V cast to float16 first. The cast is what bundling does (cosines
change by < 1e-3) and is idempotent, so an fp32 model and its fp16 bundle share a digest;
normalising makes the digest blind to a row's length, which ArcFace ignores too.
"""

from __future__ import annotations

import hashlib

import numpy as np


def prototype_set_digest(virtual: np.ndarray) -> str:
    w = np.asarray(virtual, np.float32).astype(np.float16).astype(np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    h = hashlib.sha256(b"vigface-wv-v1")
    h.update(np.asarray(w.shape, "<i8").tobytes())
    h.update(w.astype("<f4").tobytes())
    return h.hexdigest()
