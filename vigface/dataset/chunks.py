"""One chunk of identities as drawn and judged, and its atomic persistence for resume.

A finished chunk is two files under ``<out>/work/``: ``chunk_NNNNN.npz`` (accepted images and
their FR embeddings, in slot/index order) and ``chunk_NNNNN.json`` (every draw's record, the
slot -> prototype map after replacements, the spare queue position, running counters). The
``.npz`` is renamed into place before the ``.json``, and a chunk counts as finished only when
both exist, so a crash between the two redraws it (with the same seeds: the same bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vigface.atomic import atomic_path
from vigface.dataset.writers import write_json

# why a draw is not in the dataset
IMAGE_FILTER = "image_filter"  # the image failed a filter (manifest columns say which)
IDENTITY_DROPPED = "identity_dropped"  # it passed, but its identity was dropped


@dataclass
class Draw:
    """One drawn image: where it belongs, its seed attempt and the filters' numbers."""

    slot: int
    proto: int
    index: int  # image index inside the identity
    attempt: int  # 0 for the first draw; the seed is image_seed(seed, proto, index, attempt)
    cos_own: float = 0.0
    near: float = 0.0  # cosine to the nearest real prototype
    near_id: int = -1
    consistency: bool = True  # passed the consistency test
    leakage: bool = True  # passed the leakage tests
    face: bool = True  # the face detector found a well-placed face (or the gate was off)
    reason: str = ""  # empty for accepted draws


@dataclass
class Accepted:
    draw: Draw
    image: np.ndarray  # uint8 (S, S, 3)
    emb: np.ndarray  # normalised FR embedding (D,)


@dataclass
class ChunkResult:
    proto: dict[int, int]  # slot -> prototype row in use at the end of the chunk
    accepted: dict[tuple[int, int], Accepted]  # (slot, index) -> accepted draw
    queue_pos: int  # next unused candidate
    dropped: list[int] = field(default_factory=list)  # slots given up (augmentation only)
    rejected: list[Draw] = field(default_factory=list)  # every draw not in the dataset


class ChunkStore:
    """The ``work/`` folder of one dataset (or one shard of a service job)."""

    def __init__(self, work: Path):
        self.work = Path(work)

    def claim(self, settings: dict) -> None:
        """Bind this folder to the settings that decide its draws (``settings.json``): a resume
        with other settings would mix two datasets' chunks, so it is refused, naming the fields.
        A folder written before this guard existed is bound to the settings of its resume."""
        path = self.work / "settings.json"
        settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
        if path.is_file():
            held = json.loads(path.read_text())
            changed = sorted(
                k for k in held.keys() | settings.keys() if held.get(k) != settings.get(k)
            )
            if changed:
                raise ValueError(
                    f"{self.work.parent} holds a dataset drawn with other settings ("
                    + ", ".join(
                        f"{k}: {held.get(k)!r} there, {settings.get(k)!r} now" for k in changed
                    )
                    + "); write to another folder or delete it"
                )
            return
        self.work.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)

    def paths(self, c: int) -> tuple[Path, Path]:
        return self.work / f"chunk_{c:05d}.npz", self.work / f"chunk_{c:05d}.json"

    def is_done(self, c: int) -> bool:
        npz, meta = self.paths(c)
        return npz.is_file() and meta.is_file()

    def save(
        self,
        c: int,
        slots: list[int],
        res: ChunkResult,
        slot_images: list[int],
        image_size: int,
        dim: int,
        counts: dict,
        seconds: dict,
    ) -> None:
        slots = [s for s in slots if s in res.proto]
        keys = [(s, j) for s in slots for j in range(slot_images[s])]
        npz, meta = self.paths(c)
        with atomic_path(npz) as tmp:
            with tmp.open("wb") as f:
                np.savez(
                    f,
                    images=np.stack([res.accepted[k].image for k in keys])
                    if keys
                    else np.zeros((0, image_size, image_size, 3), np.uint8),
                    emb=np.stack([res.accepted[k].emb for k in keys])
                    if keys
                    else np.zeros((0, dim), np.float32),
                )
        info = {
            "slots": slots,
            "proto": {str(s): p for s, p in res.proto.items()},
            "queue_pos": res.queue_pos,
            "dropped": res.dropped,
            "rejected": [asdict(d) for d in res.rejected],
            "counts": dict(counts),
            "seconds": dict(seconds),
            "images": [asdict(res.accepted[k].draw) for k in keys],
        }
        write_json(meta, info)

    # ---- draws of an unfinished chunk, one file per sampling batch -------------------------
    def draws_dir(self, c: int) -> Path:
        return self.work / f"chunk_{c:05d}.draws"

    def save_draws(self, c: int, keys: list[str], images: np.ndarray) -> None:
        """Keep one sampling batch of chunk ``c`` (``keys`` name each image's draw), so a
        stopped run resumes from its last finished batch instead of the chunk's start."""
        d = self.draws_dir(c)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / f"batch_{len(list(d.glob('batch_*.npz'))):05d}.npz") as tmp:
            with tmp.open("wb") as f:
                np.savez(f, keys=np.asarray(keys), images=images)

    def load_draws(self, c: int) -> dict[str, np.ndarray]:
        """key -> image of every batch of chunk ``c`` saved so far."""
        out = {}
        for path in sorted(self.draws_dir(c).glob("batch_*.npz")):
            with np.load(path) as z:
                out.update(zip(z["keys"].tolist(), z["images"], strict=True))
        return out

    def clear_draws(self, c: int) -> None:
        d = self.draws_dir(c)
        if d.is_dir():
            for path in d.glob("*"):
                path.unlink()
            d.rmdir()

    def load_info(self, c: int) -> dict:
        return json.loads(self.paths(c)[1].read_text())

    def load_arrays(self, c: int):
        return np.load(self.paths(c)[0])
