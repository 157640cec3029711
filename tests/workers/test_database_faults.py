"""The database blinks while jobs run: the workers' connections are terminated once mid-shard
and again and again for 15 s (what a failover, a pooler restart or an idle-in-transaction
timeout does), with Celery workers and with the embedded worker, and PostgreSQL itself is
restarted mid-job. Every job must succeed with each image exactly once: a worker's
bookkeeping retries across a lost connection and never holds a transaction while it samples.
"""

# ruff: noqa: F811  (deploy, imported from fault_tools, is a fixture)
from __future__ import annotations

import threading
import time

import httpx
import pytest
from fault_tools import (  # noqa: F401 - deploy is a fixture
    ORDER,
    TOTAL,
    PrivatePostgres,
    Service,
    assert_delivered_once,
    deploy,
    start_worker,
    terminate_connections,
    wait_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOW_ORDER = {**ORDER, "steps": 40}  # long enough a shard to be cut mid-way


def keep_terminating(db_url: str, name: str, seconds: float, every: float = 0.5) -> dict:
    """Terminate ``name``'s connections every ``every`` s for ``seconds``, in a thread."""
    seen = {"terminated": 0}

    def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                seen["terminated"] += terminate_connections(db_url, name)
            except Exception:  # noqa: BLE001 - the server itself may be restarting
                pass
            time.sleep(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    seen["thread"] = thread
    return seen


@pytest.mark.parametrize("repeated", [False, True], ids=["once", "for_15s"])
def test_celery_workers_connections_terminated_mid_shard(deploy, s3_env, tmp_path, repeated):
    svc, client, _, _ = deploy()
    start_worker(svc, "worker", tmp_path)
    db = svc.env["VIGFACE_DATABASE_URL"]
    job = client.post("/v1/jobs", json=SLOW_ORDER).json()
    wait_job(client, job["id"], lambda j: j["progress"].get("sampled", 0) > 0, what="sampling")
    if repeated:
        seen = keep_terminating(db, "vigface-worker", 15)
        seen["thread"].join()
    else:
        seen = {"terminated": terminate_connections(db, "vigface-worker")}
    assert seen["terminated"] >= 1  # the worker had connections, and lost them
    done = wait_job(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert_delivered_once(client, done, *s3_env)


def embedded(tiny_generator, tmp_path, db_url: str) -> tuple[Service, httpx.Client]:
    """``vigface serve`` with its embedded worker on ``db_url``, everything else local."""
    from app.services.auth import create_key, create_team
    from jobstore.session import init_db, session_factory
    from model_store import BUNDLED

    model = "demo" if (BUNDLED / "demo" / "dit").is_dir() else tiny_generator.name
    init_db(db_url)
    with session_factory(db_url)() as db:
        create_team(db, "alpha", quota=1_000)
        key = create_key(db, "alpha")
    env = {
        "VIGFACE_HOME": str(tmp_path / "home"),
        "VIGFACE_DATABASE_URL": db_url,
        "VIGFACE_BROKER_URL": "",
        "VIGFACE_DEFAULT_MODEL": model,
        "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
        "VIGFACE_SHARD_IDENTITIES": "2",
        "VIGFACE_SAMPLER_BATCH_SIZE": "4",
        "VIGFACE_LEASE_SECONDS": "12",
    }
    svc = Service(env, tmp_path)
    for name in ("VIGFACE_STORAGE_URL", "VIGFACE_WORK_DIR", "VIGFACE_S3_ENDPOINT_URL"):
        svc.env.pop(name, None)
    svc.start_api()
    client = httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return svc, client


def assert_local_delivery(client, job_id: str, home) -> None:
    import csv

    done = wait_job(client, job_id, lambda j: j["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded" and done["images_done"] == TOTAL, done
    folder = home / "storage" / "jobs" / job_id
    files = [p.relative_to(folder).as_posix() for p in (folder / "imagefolder").rglob("*.jpg")]
    assert len(files) == len(set(files)) == TOTAL
    with (folder / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["accepted"] == "True"]
    assert len({(r["identity"], r["index"]) for r in rows}) == len(rows) == TOTAL


@pytest.mark.parametrize("repeated", [False, True], ids=["once", "for_15s"])
def test_the_embedded_workers_connections_terminated_mid_shard(tiny_generator, tmp_path, repeated):
    from conftest import postgres_url

    db = postgres_url()
    svc, client = embedded(tiny_generator, tmp_path, db)
    try:
        job = client.post("/v1/jobs", json=SLOW_ORDER).json()
        wait_job(client, job["id"], lambda j: j["progress"].get("sampled", 0) > 0)
        if repeated:
            seen = keep_terminating(db, "vigface-serve", 15)
            seen["thread"].join()
        else:
            seen = {"terminated": terminate_connections(db, "vigface-serve")}
        assert seen["terminated"] >= 1
        assert_local_delivery(client, job["id"], tmp_path / "home")
    finally:
        svc.stop_all()


def test_postgres_restarted_mid_job(tiny_generator, tmp_path):
    """The server itself goes down and comes back (fast shutdown: every connection closed,
    new ones refused for a while) while a shard samples."""
    pg = PrivatePostgres()
    svc = None
    try:
        svc, client = embedded(tiny_generator, tmp_path, pg.url)
        job = client.post("/v1/jobs", json=SLOW_ORDER).json()
        wait_job(client, job["id"], lambda j: j["progress"].get("sampled", 0) > 0)
        pg.restart()
        assert_local_delivery(client, job["id"], tmp_path / "home")
    finally:
        if svc is not None:
            svc.stop_all()
        pg.stop()
