"""Object storage behind one interface: a local folder (``file://``) or S3 (``s3://``).

Datasets and pushed models go here. Keys are ``/``-separated paths under the store's root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse


class ObjectStore:
    """What both stores share; subclasses provide put_file, list, download, read_bytes, url."""

    def put_dir(self, prefix: str, src: str | Path) -> list[str]:
        """Upload every file under ``src`` to ``prefix/<relative path>``; returns the keys."""
        keys = []
        for f in sorted(Path(src).rglob("*")):
            if f.is_file():
                key = f"{prefix.rstrip('/')}/{f.relative_to(src).as_posix()}"
                self.put_file(key, f)
                keys.append(key)
        return keys


class LocalStore(ObjectStore):
    """A folder on this machine; writes go to a temporary name and are renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents and p != self.root:
            raise ValueError(f"key escapes the store: {key!r}")
        return p

    def put_file(self, key: str, src: str | Path) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def download(self, key: str, dest: str | Path) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(self.path(key), tmp)
        os.replace(tmp, dest)

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return [
            f"{prefix.rstrip('/')}/{p.relative_to(base).as_posix()}"
            for p in sorted(base.rglob("*"))
            if p.is_file()
        ]

    def url(self, key: str, settings) -> str:
        """A plain link served by the API's ``/files`` route (which checks the caller)."""
        return f"{settings.public_url.rstrip('/')}/files/{key}"

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"store folder missing: {self.root}")


def open_store(url: str, endpoint_url: str | None = None):
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.netloc + parsed.path if parsed.scheme == "file" else url)
    if parsed.scheme == "s3":
        from model_store.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.lstrip("/"), endpoint_url)
    raise ValueError(f"storage_url: unsupported scheme {parsed.scheme!r} (use file:// or s3://)")
