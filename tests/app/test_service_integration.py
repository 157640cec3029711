"""The distributed deployment on this machine: real Redis broker, real PostgreSQL, moto's S3
server, and Celery worker processes started with ``vigface worker``. Faults (killed workers,
broker restarts, store outages, API restarts) are in tests/workers/test_faults.py."""

import csv
import io
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.auth import create_key, create_team
from conftest import postgres_url
from jobstore.settings import Settings
from model_store import BUNDLED
from model_store.loader import load_generator

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def deployment(tiny_generator, s3_env, tmp_path, monkeypatch, redis_url):
    BROKER = redis_url  # this run's own redis-server: no other run shares its queues
    redis.Redis.from_url(BROKER, socket_timeout=2).flushdb()
    endpoint, bucket = s3_env
    # the bundled demo generator when it is there (what production serves), else the tiny one
    model = "demo" if (BUNDLED / "demo" / "dit").is_dir() else tiny_generator.name
    env = {
        "VIGFACE_DATABASE_URL": postgres_url(),
        "VIGFACE_BROKER_URL": BROKER,
        "VIGFACE_STORAGE_URL": f"s3://{bucket}/vigface",
        "VIGFACE_S3_ENDPOINT_URL": endpoint,
        "VIGFACE_WORK_DIR": str(tmp_path / "work"),
        "VIGFACE_DEFAULT_MODEL": model,
        "VIGFACE_SHARD_IDENTITIES": "2",
        "VIGFACE_SAMPLER_BATCH_SIZE": "4",
        "VIGFACE_LEASE_SECONDS": "12",
        "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    load_generator.cache_clear()
    from jobstore.session import get_engine

    get_engine.cache_clear()
    settings = Settings()
    api = create_app(settings)
    with api.state.sessions() as db:
        create_team(db, "alpha", quota=100_000)
        key = create_key(db, "alpha")
    workers: list[subprocess.Popen] = []

    def start_worker(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        workers.append(p)
        return p

    yield TestClient(api), {"Authorization": f"Bearer {key}"}, api, start_worker, (endpoint, bucket)
    for p in workers:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    get_engine(env["VIGFACE_DATABASE_URL"]).dispose()


def wait_for(client, headers, job_id, predicate, timeout=240, tick=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if predicate(job):
            return job
        if tick:
            tick()
        time.sleep(0.3)
    raise AssertionError(f"timed out; last state {job}")


def manifest_rows(endpoint, bucket, job_id):
    body = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_object(Bucket=bucket, Key=f"vigface/jobs/{job_id}/manifest.csv")["Body"]
        .read()
        .decode()
    )
    return [r for r in csv.DictReader(io.StringIO(body)) if r["accepted"] == "True"]


ORDER = {
    "identities": 4,
    "images_per_identity": 3,
    "steps": 4,
    "seed": 3,
    "formats": ["imagefolder", "recordio", "webdataset"],
    "tau_consistency": -1.0,
    "tau_leak": 1.0,
}


def test_celery_worker_completes_a_job_into_s3(deployment):
    client, headers, api, start_worker, (endpoint, bucket) = deployment
    start_worker("w1")
    job = client.post("/v1/jobs", json=ORDER, headers=headers).json()
    job = wait_for(client, headers, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert job["images_done"] == 12 and job["shards"] == {"succeeded": 2}
    keys = {
        o["Key"]
        for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
            Bucket=bucket, Prefix=f"vigface/jobs/{job['id']}/"
        )["Contents"]
    }
    prefix = f"vigface/jobs/{job['id']}/"
    for name in (
        "report.json",
        "report.html",
        "manifest.csv",
        "dataset_card.json",
        "recordio/train.rec",
        "recordio/train.idx",
        "recordio/property",
    ):
        assert prefix + name in keys
    assert sum(k.startswith(prefix + "imagefolder/") for k in keys) == 12
    assert len(manifest_rows(endpoint, bucket, job["id"])) == 12
    links = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json()["files"]
    assert "X-Amz-Signature" in links["report.json"]
    assert client.get("/readyz").json() == {"database": "ok", "storage": "ok", "broker": "ok"}
