"""A request head (request line and headers) past ``VIGFACE_MAX_HEADER_BYTES`` gets 431 from
``vigface serve`` itself, without parsing the rest, and other clients do not wait for it."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fault_tools import Service

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tiny_generator, tmp_path):
    env = {
        "VIGFACE_HOME": str(tmp_path / "home"),
        "VIGFACE_BROKER_URL": "",
        "VIGFACE_DEFAULT_MODEL": tiny_generator.name,
        "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
        "VIGFACE_MAX_HEADER_BYTES": "65536",
    }
    svc = Service(env, tmp_path)
    for name in ("VIGFACE_DATABASE_URL", "VIGFACE_STORAGE_URL", "VIGFACE_WORK_DIR"):
        svc.env.pop(name, None)
    svc.start_api()
    yield svc
    svc.stop_all()


def send_head(port: int, header_bytes: int, chunk: int = 1 << 20) -> bytes:
    """One request whose single header is ``header_bytes`` long; the answer's first bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        while sent < header_bytes:
            s.sendall(b"a" * min(chunk, header_bytes - sent))
            sent += chunk
        s.sendall(b"\r\n\r\n")
    except OSError:  # the server answered and closed while we were still sending
        pass
    try:
        return s.recv(4096)
    except OSError:
        return b""
    finally:
        s.close()


def test_a_30_mb_header_gets_431_and_other_clients_keep_their_latency(served):
    port = served.api_port
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=served.url, timeout=10) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for t in pollers:
        t.start()
    time.sleep(0.5)
    answer = send_head(port, 30 * 2**20)
    time.sleep(0.5)
    stop.set()
    for t in pollers:
        t.join()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert b'"field": "headers"' in answer
    assert len(latencies) > 20 and float(np.percentile(latencies, 99)) < 1.0


def test_a_head_just_under_the_bound_is_served(served):
    answer = send_head(served.api_port, 60_000)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert send_head(served.api_port, 70_000).startswith(b"HTTP/1.1 431")
