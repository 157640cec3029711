"""Real processes for the fault tests: a Redis server of the test's own, a TCP proxy in front of
the S3 endpoint that can refuse or slow connections (an outage without losing the bucket), and
``vigface serve`` / ``vigface worker`` processes that can be killed and started again."""

from __future__ import annotations

import csv
import io
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest

from conftest import free_port, postgres_url
from model_store import BUNDLED


def wait_until(predicate, timeout: float, tick: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(tick)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class RedisServer:
    """``redis-server`` on a free port, nothing on disk: a restart loses every message."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        wait_until(lambda: _ping(redis, self.url), 10, what="redis-server")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _ping(redis, url) -> bool:
    try:
        return redis.Redis.from_url(url, socket_timeout=0.5).ping()
    except redis.RedisError:
        return False


class TcpProxy:
    """Forwards 127.0.0.1:port to ``target``. ``down()`` closes the listener and every open
    connection (clients see refused connections, as when an endpoint restarts); ``up()``
    listens again on the same port; ``slow(seconds)`` delays every client->server chunk."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while True:
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client and self.delay:
                        time.sleep(self.delay)
                    peers[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in peers:
                s.close()


class Service:
    """The API (``vigface serve``, with the reaper beside the broker) and Celery workers
    (``vigface worker``) as separate processes, each killable with SIGKILL."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
        self.log_dir = log_dir
        self.api_port = free_port()
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a kill takes Celery's pool children too
        )

    def start_api(self) -> None:
        self.api = self._spawn("api", "serve", "--port", str(self.api_port))
        wait_until(self._healthy, 60, what="the API")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_api(self) -> None:
        kill(self.api)

    def start_worker(self, name: str) -> subprocess.Popen:
        p = self._spawn(name, "worker")
        self.workers.append(p)
        return p

    def stop_all(self) -> None:
        for p in [*self.workers, self.api]:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.workers, self.api]:
            if p is None:
                continue
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                kill(p)


def kill(p: subprocess.Popen | None) -> None:
    """SIGKILL the process and its children (no clean-up runs)."""
    if p is not None and p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary folder, its own port), so
    a test can restart the server without touching the machine's shared one. Runs as the
    ``postgres`` user (the server refuses root); skips the test where that is not possible."""

    BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))

    def __init__(self):
        import tempfile

        import pytest

        if not self.BIN or not shutil.which("runuser"):
            pytest.skip("no PostgreSQL server binaries or runuser on this machine")
        self.bin = self.BIN[-1]
        # a folder the postgres user can reach (a test's tmp_path lies under root's 0700 one)
        self.root = Path(tempfile.mkdtemp(prefix="vigface-pg-"))
        self.root.chmod(0o755)
        self.dir = self.root / "pgdata"
        self.port = free_port()
        subprocess.run(["chown", "-R", "postgres", str(self.root)], check=True)
        self._as_postgres("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres")
        self.start()
        self._as_postgres("createdb", "-h", "127.0.0.1", "-p", str(self.port), "vigface")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/vigface"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _ctl(self, action: str) -> None:
        self._as_postgres(
            "pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "server.log"), "-w", "-m",
            "fast", "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", action,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        try:
            self._ctl("stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def terminate_connections(db_url: str, application_name: str) -> int:
    """``pg_terminate_backend`` on every connection of ``application_name`` to the database
    of ``db_url`` (what a failover, a pooler restart or an idle timeout does); how many."""
    from sqlalchemy import create_engine, text

    eng = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as c:
            return len(
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :name "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"name": application_name},
                ).all()
            )
    finally:
        eng.dispose()


# ---- a deployment of real processes, and what every fault test asks of a finished job ----
ORDER = {
    "identities": 4,
    "images_per_identity": 6,
    "steps": 20,
    "seed": 5,
    "formats": ["imagefolder", "recordio"],
    "tau_consistency": -1.0,
    "tau_leak": 1.0,
}
TOTAL = ORDER["identities"] * ORDER["images_per_identity"]
JOB_BOUND_S = 240  # any job here, fault included, ends within this


@pytest.fixture
def deploy(tiny_generator, s3_env, tmp_path):
    """``deploy(**env)`` -> (service, client, proxy, redis): everything started but workers."""
    endpoint, bucket = s3_env
    started: list = []

    def make(**overrides):
        redis_server = RedisServer(tmp_path)
        proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
        model = "demo" if (BUNDLED / "demo" / "dit").is_dir() else tiny_generator.name
        env = {
            "VIGFACE_HOME": str(tmp_path / "home"),
            "VIGFACE_DATABASE_URL": postgres_url(),
            "VIGFACE_BROKER_URL": redis_server.url,
            "VIGFACE_STORAGE_URL": f"s3://{bucket}/vigface",
            "VIGFACE_S3_ENDPOINT_URL": proxy.url,
            "VIGFACE_DEFAULT_MODEL": model,
            "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
            "VIGFACE_SHARD_IDENTITIES": "2",
            "VIGFACE_SAMPLER_BATCH_SIZE": "4",
            "VIGFACE_LEASE_SECONDS": "12",
            "VIGFACE_RESEND_AFTER_SECONDS": "6",
            "VIGFACE_UPLOAD_RETRY_SECONDS": "60",
            **overrides,
        }
        svc = Service(env, tmp_path)
        started.append((svc, proxy, redis_server))
        from app.services.auth import create_key, create_team
        from jobstore.session import init_db, session_factory

        init_db(env["VIGFACE_DATABASE_URL"])
        with session_factory(env["VIGFACE_DATABASE_URL"])() as db:
            create_team(db, "alpha", quota=1_000)
            key = create_key(db, "alpha")
        svc.start_api()
        client = httpx.Client(
            base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        return svc, client, proxy, redis_server

    yield make
    for svc, proxy, redis_server in started:
        svc.stop_all()
        proxy.down()
        redis_server.stop()


def start_worker(svc: Service, name: str, tmp_path):
    """A worker with a work disk of its own, as on another machine."""
    svc.env["VIGFACE_WORK_DIR"] = str(tmp_path / name)
    return svc.start_worker(name)


def free_identities(svc: Service, client) -> int:
    name = svc.env["VIGFACE_DEFAULT_MODEL"]
    models = {m["name"]: m for m in client.get("/v1/models").json()}
    return models[name]["free_virtual_identities"]


def job_state(client, job_id):
    try:
        return client.get(f"/v1/jobs/{job_id}").json()
    except httpx.HTTPError:  # the API may be down in the middle of a fault
        return None


def wait_job(client, job_id, predicate, timeout=JOB_BOUND_S, what="job state"):
    return wait_until(
        lambda: (j := job_state(client, job_id)) is not None and predicate(j) and j,
        timeout,
        what=what,
    )


def assert_delivered_once(client, job, endpoint, bucket):
    """Succeeded, exactly the order, no (identity, index) twice in files or manifest."""
    assert job["status"] == "succeeded", job
    assert job["images_done"] == TOTAL
    s3 = boto3.client("s3", endpoint_url=endpoint)
    prefix = f"vigface/jobs/{job['id']}/"
    body = s3.get_object(Bucket=bucket, Key=prefix + "manifest.csv")["Body"].read().decode()
    rows = [r for r in csv.DictReader(io.StringIO(body)) if r["accepted"] == "True"]
    assert len(rows) == TOTAL
    assert len({(r["identity"], r["index"]) for r in rows}) == TOTAL
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "imagefolder/"
    )
    files = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert len(files) == len(set(files)) == TOTAL
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["dataset"]["spec"]["identities"] == ORDER["identities"]
