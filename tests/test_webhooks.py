"""Webhooks: Standard Webhooks signature, retries with back-off, delivery on job completion."""

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from workers.webhooks import deliver, sign


@pytest.fixture
def receiver():
    """A local HTTP endpoint that fails its first ``fail_first`` calls, then records."""
    state = {"fail_first": 0, "calls": [], "event": threading.Event()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            state["calls"].append((dict(self.headers), body))
            ok = len(state["calls"]) > state["fail_first"]
            self.send_response(200 if ok else 503)
            self.end_headers()
            if ok:
                state["event"].set()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", state
    server.shutdown()


def test_signature_is_standard_webhooks():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    sig = sign(secret, "msg_1", 1700000000, b'{"a":1}')
    expected = hmac.new(b"0123456789abcdef", b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    assert sig == "v1," + base64.b64encode(expected).decode()


def test_delivery_retries_until_accepted(receiver):
    url, state = receiver
    state["fail_first"] = 2
    assert deliver(
        url, "s3cret", "job-1:succeeded", {"job_id": "job-1"}, attempts=4, base_delay=0.01
    )
    assert len(state["calls"]) == 3
    headers, body = state["calls"][-1]
    ts = int(headers["webhook-timestamp"])
    assert headers["webhook-id"] == "job-1:succeeded"
    assert headers["webhook-signature"] == sign("s3cret", "job-1:succeeded", ts, body)
    assert json.loads(body) == {"job_id": "job-1"}


def test_delivery_gives_up_after_its_attempts(receiver):
    url, state = receiver
    state["fail_first"] = 99
    assert not deliver(url, "s", "x", {}, attempts=3, base_delay=0.01)
    assert len(state["calls"]) == 3


def test_job_completion_sends_a_signed_webhook(receiver, tiny_generator, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.auth import create_key, create_team
    from model_store.loader import load_generator
    from workers.embedded import EmbeddedWorker
    from workers.settings import Settings

    url, state = receiver
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        storage_url=f"file://{tmp_path}/s",
        work_dir=tmp_path / "w",
        default_model=tiny_generator.name,
        webhook_secret="hook-secret",
    )
    api = create_app(settings)
    with api.state.sessions() as db:
        create_team(db, "alpha", quota=100)
        key = create_key(db, "alpha")
    job = (
        TestClient(api)
        .post(
            "/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "identities": 1,
                "images_per_identity": 1,
                "steps": 1,
                "tau_consistency": -1,
                "tau_leak": 1,
                "webhook_url": url,
            },
        )
        .json()
    )
    worker = EmbeddedWorker(api.state.sessions, settings)
    while worker.run_once():
        pass
    assert state["event"].wait(30)
    headers, body = state["calls"][-1]
    assert json.loads(body)["type"] == "job.succeeded" and json.loads(body)["job_id"] == job["id"]
    ts = int(headers["webhook-timestamp"])
    assert headers["webhook-signature"] == sign("hook-secret", headers["webhook-id"], ts, body)
