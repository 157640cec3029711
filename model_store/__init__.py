"""The model store: named, versioned model folders that the CLI, workers and API load.

An entry is a folder holding either a stage-1 FR artifact directly (``model_card.json`` with
``"kind": "fr"``) or a complete generator with an ``fr/`` sub-folder. Entries are looked up,
in order, in ``$VIGFACE_MODEL_STORE`` (a folder, ``:``-separated for several), in the data
home's own store (``$VIGFACE_HOME/store``: where ``vigface extend-virtual --name`` writes) and
in the models bundled with the package (``model_store/models``). A path to a folder is
accepted wherever a name is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

BUNDLED = Path(__file__).parent / "models"
CARD = "model_card.json"


class ModelNotFound(LookupError):
    """No model folder or store entry of that name."""


@dataclass
class StoreEntry:
    name: str
    path: Path
    kind: str


def vigface_home() -> Path:
    """The data home every local path defaults under: ``$VIGFACE_HOME``, else
    ``$XDG_DATA_HOME/vigface``, else ``~/.local/share/vigface``."""
    if os.environ.get("VIGFACE_HOME"):
        return Path(os.environ["VIGFACE_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vigface"


def user_store() -> Path:
    """The data home's own model store (entries made on this machine)."""
    return vigface_home() / "store"


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("VIGFACE_MODEL_STORE", "").split(":") if p]
    return [*extra, user_store(), BUNDLED]


def list_models() -> list[StoreEntry]:
    seen: dict[str, StoreEntry] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if (d / CARD).is_file() and d.name not in seen:
                kind = json.loads((d / CARD).read_text()).get("kind", "unknown")
                seen[d.name] = StoreEntry(d.name, d, kind)
    return list(seen.values())


def resolve(name_or_path: str | Path, part: str | None = None) -> Path:
    """Folder of a model given a path or a store name; ``part="fr"`` finds its FR artifact."""
    p = Path(name_or_path)
    if not p.is_dir():
        matches = [e.path for e in list_models() if e.name == str(name_or_path)]
        if not matches:
            names = ", ".join(e.name for e in list_models()) or "none"
            raise ModelNotFound(
                f"no model folder or store entry named {name_or_path!r} (store has: {names})"
            )
        p = matches[0]
    if part == "fr" and (p / "fr").is_dir():
        p = p / "fr"
    return p


def read_card(name_or_path: str | Path) -> dict:
    path = resolve(name_or_path) / CARD
    if not path.is_file():
        raise ModelNotFound(f"{path} does not exist")
    return json.loads(path.read_text())
