"""What the API needs to know of a model without loading it: card, prototype count, the
prototype set's digest and the pose bank.

Validating an order needs these few numbers; loading the DiT and the FR backbone (hundreds of
MB on an accelerator) is the workers' business. A description reads three small files: the
card, the virtual-prototype tensor (k x 512, one MB at fp16) and the pose landmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from model_store import CARD, ModelNotFound, resolve
from vigface.model_card import load_card
from vigface.pose import PoseBank
from vigface.prototype_set import prototype_set_digest, row_keys

POSES_FILE = "pose_landmarks.npy"
PROTOTYPES_FILE = "prototypes.safetensors"


@dataclass(frozen=True)
class ModelDescription:
    name: str
    path: Path
    kind: str
    card: dict
    virtual_prototypes: int  # rows of W_V: the identities this model can sell
    prototype_set: str  # digest of W_V (vigface/prototype_set.py): changes when rows are added
    pose_bank: PoseBank | None
    upsampler_size: int | None = None  # output side of its upsampler/, None without one
    output_size: int | None = None  # side of the faces it draws (decoder's, upsampler's)
    row_keys: tuple[str, ...] = ()  # each row's own key: what the ledger sells

    @property
    def lineage(self) -> str:
        """The key of row 0: shared by every copy and every extension of this W_V."""
        return self.row_keys[0] if self.row_keys else ""


def locate(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | Path | None = None,
) -> Path:
    """A local store entry, or a model pulled from the object store's registry into ``cache``."""
    try:
        return resolve(name)
    except ModelNotFound:
        if not storage_url:
            raise
    from model_store.remote import pull
    from model_store.storage import open_store

    store = open_store(storage_url, endpoint_url)
    try:
        return pull(store, name, cache or Path.home() / ".cache" / "vigface" / "models")
    except Exception as exc:  # a missing key raises differently per backend
        raise ModelNotFound(f"model {name!r} is neither local nor in the model registry") from exc


def describe_folder(name: str, path: Path) -> ModelDescription:
    from safetensors import safe_open

    if (path / "dit").is_dir():  # a generator: its typed card (raises naming a bad field)
        card = load_card(path)
    else:  # a stage-1 FR folder: its own training card
        card = json.loads((path / CARD).read_text()) if (path / CARD).is_file() else {}
    fr = path / "fr" if (path / "fr").is_dir() else path
    if not (fr / PROTOTYPES_FILE).is_file():
        raise ModelNotFound(f"model {name!r} has no prototypes")
    with safe_open(fr / PROTOTYPES_FILE, framework="numpy") as f:
        virtual = f.get_tensor("virtual") if "virtual" in f.keys() else np.zeros((0, 1))
    poses = path / POSES_FILE
    return ModelDescription(
        name=name,
        path=path,
        kind=card.get("kind", "generator" if (path / "dit").is_dir() else "fr"),
        card=card,
        virtual_prototypes=int(virtual.shape[0]),
        prototype_set=prototype_set_digest(virtual),
        row_keys=tuple(row_keys(virtual)),
        pose_bank=PoseBank.from_landmarks(np.load(poses)) if poses.is_file() else None,
        upsampler_size=_upsampler_size(path),
        output_size=_output_size(path, card),
    )


def _output_size(path: Path, card: dict) -> int | None:
    """The side of the faces the DiT hands the writer: its own, or its autoencoder's
    decoded side (each stride-2 level of the decoder doubles it)."""
    side = card.get("sample_size")
    config = path / "autoencoder" / "config.json"
    if side and config.is_file():
        levels = len(json.loads(config.read_text())["block_out_channels"])
        return int(side) * 2 ** (levels - 1)
    return side


def _upsampler_size(path: Path) -> int | None:
    config = path / "upsampler" / "model" / "config.json"
    return int(json.loads(config.read_text())["sample_size"]) if config.is_file() else None


@lru_cache(maxsize=32)
def describe(
    name: str,
    storage_url: str | None = None,
    endpoint_url: str | None = None,
    cache: str | None = None,
) -> ModelDescription:
    """The description of store entry ``name`` (cached per process)."""
    return describe_folder(name, locate(name, storage_url, endpoint_url, cache))
