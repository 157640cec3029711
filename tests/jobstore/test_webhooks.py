"""Webhooks: Standard Webhooks signature, retries with back-off, delivery on job completion."""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from jobstore.webhooks import attempt_delivery, deliver_due, notify, sign


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


def _outbox(tmp_path, url, **kw):
    """A database with one job whose webhook is ``url``, its outbox row, and the settings."""
    from app.services.auth import create_team
    from jobstore.models import Job, JobStatus
    from jobstore.session import init_db, session_factory
    from jobstore.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        webhook_secret="s3cret",
        webhook_backoff_seconds=0.01,
        webhook_allowed_hosts=["127.0.0.1"],  # the test receiver
        **kw,
    )
    init_db(settings.database_url)
    sessions = session_factory(settings.database_url)
    with sessions() as db:
        team = create_team(db, "alpha", quota=10)
        job = Job(team_id=team.id, model="m", spec={}, images_requested=1, webhook_url=url)
        job.status = JobStatus.SUCCEEDED
        db.add(job)
        db.commit()
        job_id = job.id
    return sessions, settings, job_id, notify(sessions, job_id)


def _deliver_until_settled(sessions, settings, delivery_id):
    from jobstore.models import WebhookDelivery

    for _ in range(200):
        status = attempt_delivery(sessions, settings, delivery_id)
        if status != "pending":
            break
        time.sleep(0.02)
    with sessions() as db:
        return db.get(WebhookDelivery, delivery_id)


def test_delivery_retries_until_accepted_and_logs_attempts(receiver, tmp_path):
    url, state = receiver
    state["fail_first"] = 2
    sessions, settings, job_id, delivery = _outbox(tmp_path, url)
    assert notify(sessions, job_id) is None  # one event per job state
    row = _deliver_until_settled(sessions, settings, delivery)
    assert row.status == "delivered" and row.attempts == 3 and row.last_error is None
    assert len(state["calls"]) == 3
    headers, body = state["calls"][-1]
    ts = int(headers["webhook-timestamp"])
    assert headers["webhook-id"] == f"{job_id}:succeeded"
    assert headers["webhook-signature"] == sign("s3cret", f"{job_id}:succeeded", ts, body)
    assert json.loads(body)["job_id"] == job_id and json.loads(body)["type"] == "job.succeeded"


def test_delivery_gives_up_after_its_attempts_and_says_why(receiver, tmp_path):
    url, state = receiver
    state["fail_first"] = 99
    sessions, settings, _, delivery = _outbox(tmp_path, url, webhook_max_attempts=3)
    row = _deliver_until_settled(sessions, settings, delivery)
    assert row.status == "failed" and row.attempts == 3 and row.last_error == "HTTP 503"
    assert len(state["calls"]) == 3


def test_a_pending_delivery_waits_for_its_backoff(receiver, tmp_path):
    url, state = receiver
    state["fail_first"] = 1
    sessions, settings, _, delivery = _outbox(tmp_path, url)
    settings = settings.model_copy(update={"webhook_backoff_seconds": 3600})
    assert deliver_due(sessions, settings) == 1  # first attempt fails: next in an hour
    assert deliver_due(sessions, settings) == 0 and len(state["calls"]) == 1


def test_job_completion_sends_a_signed_webhook(receiver, tiny_generator, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.auth import create_key, create_team
    from jobstore.settings import Settings
    from model_store.loader import load_generator
    from workers.embedded import EmbeddedWorker

    url, state = receiver
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        storage_url=f"file://{tmp_path}/s",
        work_dir=tmp_path / "w",
        default_model=tiny_generator.name,
        webhook_secret="hook-secret",
        webhook_allowed_hosts=["127.0.0.1"],  # the test receiver
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
    shown = TestClient(api).get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert shown.json()["webhook"] == {"status": "delivered", "attempts": 1, "last_error": None}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/",
        "http://[::1]/",
        "http://localhost/",
    ],
)
def test_webhooks_to_private_addresses_are_refused_unless_allowed(url):
    from jobstore.webhooks import refused_address

    assert "private, loopback or reserved" in refused_address(url, [])
    from urllib.parse import urlparse

    assert refused_address(url, [urlparse(url).hostname]) is None


def test_a_refused_address_at_delivery_fails_without_calling_it(receiver, tmp_path):
    url, state = receiver
    sessions, settings, _, delivery = _outbox(tmp_path, url)
    settings = settings.model_copy(update={"webhook_allowed_hosts": []})
    row = _deliver_until_settled(sessions, settings, delivery)
    assert row.status == "failed" and "private, loopback" in row.last_error
    assert state["calls"] == []
