"""What a new user meets first: one data home from any folder, one-line errors, links that
follow the port actually served."""

import os
import socket
import subprocess
import sys

from app.client import APIError
from jobstore.settings import Settings


def _vigface(args, cwd, env):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_admin_commands_share_one_data_home_from_any_folder(tmp_path):
    env = {**os.environ, "VIGFACE_HOME": str(tmp_path / "home"), "PYTHONPATH": os.getcwd()}
    for k in ("VIGFACE_DATABASE_URL", "VIGFACE_STORAGE_URL"):
        env.pop(k, None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = _vigface(["admin", "create-team", "alpha"], tmp_path / "a", env)
    assert r.returncode == 0, r.stderr
    r = _vigface(["admin", "create-key", "alpha"], tmp_path / "b", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("vgf_")
    assert (tmp_path / "home" / "vigface.db").is_file()
    assert not list((tmp_path / "a").iterdir()) and not list((tmp_path / "b").iterdir())


def test_a_refused_connection_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VIGFACE_API_KEY": "vgf_x", "PYTHONPATH": os.getcwd()}
    r = _vigface(["jobs", "list", "--url", f"http://127.0.0.1:{port}"], tmp_path, env)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "cannot reach the service" in lines[0]
    assert "Traceback" not in r.stderr


def test_api_errors_read_as_field_and_message():
    err = APIError(404, [{"field": "job_id", "message": "no such job"}])
    assert str(err) == "HTTP 404: job_id: no such job"
    assert str(APIError(500, "boom")) == "HTTP 500: boom"


def test_links_follow_the_served_address_unless_a_public_url_is_set(tmp_path):
    s = Settings(home=tmp_path, port=18100)
    assert s.base_url == "http://127.0.0.1:18100"
    assert Settings(home=tmp_path, host="0.0.0.0", port=9).base_url == "http://127.0.0.1:9"
    assert Settings(home=tmp_path, public_url="https://faces.example").base_url == (
        "https://faces.example"
    )
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'vigface.db'}"


def test_eta_uses_the_workers_sampling_rate_and_ignores_stale_workers():
    from datetime import timedelta

    from app.services.views import sampling_rate
    from jobstore.models import Job, JobStatus, utcnow

    now = utcnow()
    job = Job(status=JobStatus.RUNNING, images_requested=100, images_done=40)
    job.progress = {
        "updated_at": now.isoformat(),
        "workers": {
            "a": {"img_per_s": 2.0, "updated_at": now.isoformat()},
            "b": {"img_per_s": 3.0, "updated_at": (now - timedelta(seconds=5)).isoformat()},
            "dead": {"img_per_s": 9.0, "updated_at": (now - timedelta(minutes=10)).isoformat()},
        },
    }
    rate, updated = sampling_rate(job)
    assert rate == 5.0 and updated == now
    job.status = JobStatus.SUCCEEDED
    assert sampling_rate(job)[0] is None


def test_serve_workers_needs_a_broker_and_serves_with_one(tmp_path, redis_url):
    import signal
    import time

    import httpx

    from conftest import free_port

    env = {**os.environ, "VIGFACE_HOME": str(tmp_path / "home"), "PYTHONPATH": os.getcwd()}
    env.pop("VIGFACE_BROKER_URL", None)
    r = _vigface(["serve", "--workers", "2"], tmp_path, env)
    assert r.returncode == 2 and "--workers" in r.stderr and "broker" in r.stderr
    from conftest import postgres_url

    env |= {"VIGFACE_DATABASE_URL": postgres_url(), "VIGFACE_BROKER_URL": redis_url}
    key = _vigface(["admin", "create-team", "t"], tmp_path, env)
    key = _vigface(["admin", "create-key", "t"], tmp_path, env).stdout.strip().splitlines()[-1]
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"X-API-Key": key})
                break
            except httpx.HTTPError:
                assert time.time() < deadline and p.poll() is None
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["items"] == []
        children = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) >= 3  # the supervisor and two API processes
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)


def test_quickstart_serves_with_a_printed_key(tmp_path):
    """README's main command: a team and key on first start, the embedded service behind."""
    import re
    import signal
    import time

    import httpx

    from conftest import free_port

    env = {**os.environ, "VIGFACE_HOME": str(tmp_path / "home"), "PYTHONPATH": os.getcwd()}
    for k in ("VIGFACE_BROKER_URL", "VIGFACE_DATABASE_URL", "VIGFACE_STORAGE_URL"):
        env.pop(k, None)
    port = free_port()
    log = tmp_path / "quickstart.log"
    with log.open("w") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "quickstart", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and p.poll() is None, log.read_text()
            time.sleep(0.3)
        key = re.search(r"vgf_[A-Za-z0-9_-]+", log.read_text()).group(0)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": key})
        assert r.status_code == 200 and any(m["name"] == "demo" for m in r.json())
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
