"""The model store in the object store: push an entry, pull it by name and content hash.

``models/<name>/<sha256>/...`` holds the files of one version and ``models/<name>/LATEST``
its hash. The hash is over the sorted (relative path, file SHA-256) pairs, so the same
folder always pushes to the same place, and a worker's cache at
``<cache>/<name>/<sha256>/`` is valid forever once complete (``.complete`` marker).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from model_store.digest import file_sha256

SKIP = {"checkpoints"}


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".complete" and not SKIP & set(p.relative_to(folder).parts)
    )


def content_hash(folder: str | Path) -> str:
    folder = Path(folder)
    h = hashlib.sha256()
    for p in _files(folder):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def push(store, folder: str | Path, name: str) -> str:
    folder = Path(folder)
    if not (folder / "model_card.json").is_file():
        raise ValueError(f"{folder} is not a model folder (no model_card.json)")
    digest = content_hash(folder)
    for p in _files(folder):
        store.put_file(f"models/{name}/{digest}/{p.relative_to(folder).as_posix()}", p)
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(digest)
    store.put_file(f"models/{name}/LATEST", f.name)
    os.unlink(f.name)
    return digest


def pull(store, name: str, cache: str | Path, digest: str | None = None) -> Path:
    """Local folder of ``name`` at ``digest`` (default: LATEST), downloaded once."""
    digest = digest or store.read_bytes(f"models/{name}/LATEST").decode().strip()
    dest = Path(cache) / name / digest
    if (dest / ".complete").is_file():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=Path(cache).mkdir(parents=True, exist_ok=True) or cache))
    prefix = f"models/{name}/{digest}/"
    keys = store.list(prefix.rstrip("/"))
    if not keys:
        raise LookupError(f"no model {name!r} at {digest} in the store")
    for key in keys:
        store.download(key, tmp / key[len(prefix) :])
    if content_hash(tmp) != digest:
        shutil.rmtree(tmp)
        raise ValueError(f"model {name}@{digest}: downloaded files do not match their hash")
    (tmp / ".complete").write_text(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, dest)
    return dest
