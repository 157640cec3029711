"""The identity of a set of virtual prototypes, independent of where and how it is stored.

The service sells rows of W_V. Two model folders (a store name, a copy under another path, a
re-push, an fp16 bundle of fp32 weights) that hold the same W_V must share one ledger, so the
ledger is keyed by this digest rather than by a name: SHA-256 over the shape and the
L2-normalised rows of W_V cast to float16 first. The cast is what bundling does (cosines
change by < 1e-3) and is idempotent, so an fp32 model and its fp16 bundle share a digest;
normalising makes the digest blind to a row's length, which ArcFace ignores too.

The ledger itself keys each sold identity by its own row (:func:`row_keys`, the same cast and
normalisation, one digest per row): rows appended to W_V later (``vigface extend-virtual``)
change the set's digest but no row's key, so identities sold before stay sold, and copies of
a model still share one ledger. The key of row 0 names the model's lineage (every extension
of a model keeps its row 0) and lets the ledger find a model's sold rows with one index.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _canonical(virtual: np.ndarray) -> np.ndarray:
    w = np.asarray(virtual, np.float32).astype(np.float16).astype(np.float32)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def row_keys(virtual: np.ndarray) -> list[str]:
    """One 64-hex SHA-256 per row of W_V (fp16-cast, unit length): the ledger's key of the
    virtual identity that row is."""
    w = _canonical(virtual).astype("<f4")
    return [hashlib.sha256(b"vigface-row-v1" + row.tobytes()).hexdigest() for row in w]


def prototype_set_digest(virtual: np.ndarray) -> str:
    w = _canonical(virtual)
    h = hashlib.sha256(b"vigface-wv-v1")
    h.update(np.asarray(w.shape, "<i8").tobytes())
    h.update(w.astype("<f4").tobytes())
    return h.hexdigest()
