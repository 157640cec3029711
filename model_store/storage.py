"""Object storage behind one interface: a local folder (``file://``) or S3 (``s3://``).

Datasets, shard outputs and pushed models go here. Keys are ``/``-separated paths under the
store's root. Every store fulfils :class:`ObjectStore`; callers never ask which one they hold.
Download links are the one thing that differs: S3 presigns its own, while a local folder has no
URL of its own, so callers pass ``plain_link`` (key -> URL of the API route that serves it).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import tenacity

from model_store.digest import file_sha256
from vigface.atomic import atomic_path

log = logging.getLogger(__name__)


class ObjectStore(Protocol):
    def put_file(self, key: str, src: str | Path) -> None: ...

    def sha256(self, key: str) -> str | None:
        """Hex SHA-256 of the stored object, or None if there is none (or none recorded)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def read_bytes(self, key: str) -> bytes: ...

    def iter_bytes(self, key: str, chunk_size: int = 2**20) -> Iterator[bytes]: ...

    def download(self, key: str, dest: str | Path) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None:
        """Remove one object; no error if it is not there."""
        ...

    def link(self, key: str, plain_link: Callable[[str], str]) -> str: ...

    def ping(self) -> None: ...


def put_dir(store: ObjectStore, prefix: str, src: str | Path) -> list[str]:
    """Upload every file under ``src`` to ``prefix/<relative path>``; returns the keys.

    Resumable: an object already stored with the same SHA-256 is not sent again, so an upload
    cut short by an outage continues where it stopped when it is run again."""
    keys = []
    for f in sorted(Path(src).rglob("*")):
        if f.is_file():
            key = f"{prefix.rstrip('/')}/{f.relative_to(src).as_posix()}"
            if store.sha256(key) != file_sha256(f):
                store.put_file(key, f)
            keys.append(key)
    return keys


class StoreUnavailable(RuntimeError):
    """The object store kept failing for the whole retry window."""


def retrying(
    call: Callable[[], object],
    window_s: float,
    first_wait_s: float = 1.0,
):
    """Run ``call`` until it succeeds, waiting 1, 2, 4, ... s (at most 30) between failures,
    for up to ``window_s`` seconds; then raise :class:`StoreUnavailable` from the last error.

    For object-store outages (an endpoint restarting, a network blip): the store's own client
    retries one request a few times within seconds; this covers an outage of minutes. Any
    exception counts as transient: a key escaping the store (ValueError) is the one permanent
    error, and it is raised at once. A caller holding a lease keeps it alive with a heartbeat
    (:mod:`workers.heartbeat`), whatever this waits."""
    retryer = tenacity.Retrying(
        stop=tenacity.stop_after_delay(window_s),
        wait=tenacity.wait_exponential(multiplier=first_wait_s, max=30.0),
        retry=tenacity.retry_if_not_exception_type(ValueError),
        before_sleep=lambda state: log.warning(
            "object store call failed (%s); retrying in %.0f s",
            state.outcome.exception(),
            state.next_action.sleep,
        ),
        reraise=False,
    )
    try:
        return retryer(call)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        raise StoreUnavailable(f"object store unavailable for {window_s:.0f} s: {last}") from last


class LocalStore:
    """A folder on this machine; writes go to a temporary name and are renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return p

    def put_file(self, key: str, src: str | Path) -> None:
        with atomic_path(self._path(key)) as tmp:
            shutil.copyfile(src, tmp)

    def sha256(self, key: str) -> str | None:
        p = self._path(key)
        return file_sha256(p) if p.is_file() else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def iter_bytes(self, key: str, chunk_size: int = 2**20) -> Iterator[bytes]:
        with self._path(key).open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def download(self, key: str, dest: str | Path) -> None:
        with atomic_path(dest) as tmp:
            shutil.copyfile(self._path(key), tmp)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [
            f"{prefix.rstrip('/')}/{p.relative_to(base).as_posix()}"
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")
        ]

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def link(self, key: str, plain_link: Callable[[str], str]) -> str:
        return plain_link(key)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"store folder missing: {self.root}")


def open_store(
    url: str, endpoint_url: str | None = None, public_endpoint_url: str | None = None
) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.netloc + parsed.path if parsed.scheme == "file" else url)
    if parsed.scheme == "s3":
        from model_store.s3 import S3Store

        return S3Store(
            parsed.netloc,
            parsed.path.lstrip("/"),
            endpoint_url,
            public_endpoint_url=public_endpoint_url,
        )
    raise ValueError(f"storage_url: unsupported scheme {parsed.scheme!r} (use file:// or s3://)")
