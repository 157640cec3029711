"""Run ``vigface serve`` as a child process for the length of a ``with`` block.

Used by the browser and client tests and by ``bench/dashboard_screenshots.py``: they need the
real server (uvicorn, its own process) rather than an in-process test client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


@contextlib.contextmanager
def running_service(env: dict, port: int, wait_s: float = 30.0) -> Iterator[str]:
    """`vigface serve` in its own process group on 127.0.0.1:port; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
