"""Write-to-temporary-then-rename: a crash never leaves a truncated file under its final name.

``os.replace`` is atomic on POSIX within one file system, so a reader sees either the old file
or the complete new one. The temporary name sits beside the target (same file system) and ends
in ``.tmp``, which resumable steps ignore.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: str | Path) -> Path:
    """The temporary name :func:`atomic_path` writes to before renaming into ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; renames it to ``path`` if the block succeeds and
    removes it if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
