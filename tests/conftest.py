"""Shared fixtures: small generated face-like folders (never real faces) and tiny configs."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

SHARED_LFW = Path(
    os.environ.get(
        "VIGFACE_LFW112", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw112"
    )
)


# the bundled models' statement of training data and terms, for `models add --terms`
TERMS_FILE = str(Path(__file__).resolve().parents[1] / "vigface/configs/terms_lfw112.yaml")


@pytest.fixture
def lfw112() -> Path:
    """The real LFW-112 folder from ../shared (or $VIGFACE_LFW112); skip when absent."""
    if not (SHARED_LFW / "train").is_dir():
        pytest.skip(f"LFW-112 not found at {SHARED_LFW}")
    return SHARED_LFW


def synthetic_identity_images(rng: np.random.Generator, identity: int, count: int, size=112):
    """Images of one made-up identity: a fixed random low-frequency pattern plus noise/shift."""
    base_rng = np.random.default_rng(1000 + identity)
    low = base_rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    pattern = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), np.float32)
    out = []
    for _ in range(count):
        dx, dy = rng.integers(-3, 4, 2)
        img = np.roll(pattern, (dy, dx), axis=(0, 1)) + rng.normal(0, 12, pattern.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_face_folder(root: Path, identities: int = 6, per_identity: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["split,identity,file,detector,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    for i in range(identities):
        name = f"person_{i:03d}"
        (root / name).mkdir(exist_ok=True)
        for j, img in enumerate(synthetic_identity_images(rng, i, per_identity)):
            fname = f"{name}_{j + 1:04d}.jpg"
            (root / name / fname).write_bytes(jpeg_bytes(img))
            rows.append(f"train,{name},{fname},hog,38,52,74,52,56,72,42,92,70,92")
    (root.parent / f"{root.name}_landmarks.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def face_folder(tmp_path: Path) -> Path:
    return make_face_folder(tmp_path / "train")


TINY_CONFIG = """
backbone:
  layers: [1, 1, 1, 1]
  widths: [8, 8, 16, 16]
  input_size: 28
  embedding_dim: 32
head:
  scale: 16.0
  margin: 0.3
  num_virtual: 4
augment:
  flip: true
  shift: 1
optim:
  name: sgd
  lr: 0.05
  warmup_epochs: 0.5
epochs: 2
batch_size: 8
log_every: 2
threads: 1
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_CONFIG)
    return p


TINY_DIT = """
model: {sample_size: 16, patch_size: 4, hidden_size: 32, depth: 2, num_heads: 2}
diffusion: {num_train_timesteps: 100}
identity_loss_weight: 0.1
warmup_steps: 2
epochs: 2
batch_size: 8
log_every: 2
checkpoint_every_steps: 4
threads: 1
"""


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> Path:
    """A complete (tiny, barely trained) generator entry with filter defaults in its card."""
    import json

    import yaml

    from vigface.config import TrainDiTConfig, TrainFRConfig
    from vigface.training.dit import train_dit
    from vigface.training.fr import train_fr

    root = tmp_path_factory.mktemp("tinygen")
    data = make_face_folder(root / "train")
    fr_cfg = TrainFRConfig.model_validate(
        yaml.safe_load(TINY_CONFIG) | {"head": {"scale": 16.0, "margin": 0.3, "num_virtual": 40}}
    )
    train_fr(fr_cfg, data, root / "fr", progress=False)
    dit_cfg = TrainDiTConfig.model_validate(yaml.safe_load(TINY_DIT))
    train_dit(dit_cfg, data, root / "fr", root / "gen", progress=False)
    card_path = root / "gen" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["filters"] = {"tau_leak": 1.0, "tau_consistency": -1.0}
    card_path.write_text(json.dumps(card))
    return root / "gen"


# One namespace per test run: two runs on one machine (two checkouts, a developer and CI) meet
# on the same PostgreSQL and Redis, so every database this run makes carries the run's own
# prefix and is dropped at the end, and the broker is a redis-server of the run's own.
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
PG_ADMIN = os.environ.get(
    "VIGFACE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_made_databases: list[str] = []


def postgres_url() -> str:
    """A fresh, empty PostgreSQL database of this run's own (skip when PostgreSQL is down)."""
    from sqlalchemy import create_engine, text

    name = f"vigface_test_{RUN_ID}_{len(_made_databases)}"
    try:
        eng = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        eng.dispose()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    _made_databases.append(name)
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _drop_made_databases() -> None:
    from sqlalchemy import create_engine, text

    if not _made_databases:
        return
    eng = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        for name in _made_databases:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


def pytest_sessionfinish(session, exitstatus):
    try:
        _drop_made_databases()
    except Exception as exc:  # noqa: BLE001  (a leftover database never fails the run)
        print(f"warning: could not drop this run's test databases: {exc}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A ``redis-server`` of this run's own on a free port (skip when it is not installed)."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from fault_tools import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """moto's standalone S3 server on 127.0.0.1 over real HTTP (not an in-process mock)."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url, timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """AWS credentials for moto and a fresh bucket named ``datasets``."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"datasets-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    return moto_server, bucket


def embedded_service(tmp_path: Path, default_model: str, **overrides):
    """(app, settings, API key of team ``alpha``): the embedded service in this process on
    SQLite and a local store under ``tmp_path``, caches of earlier tests' models cleared."""
    from app.main import create_app
    from app.services.auth import create_key, create_team
    from jobstore.session import get_engine
    from jobstore.settings import Settings
    from model_store.description import describe
    from model_store.loader import load_generator

    load_generator.cache_clear()
    describe.cache_clear()
    get_engine.cache_clear()
    settings = Settings(
        **{
            "database_url": f"sqlite:///{tmp_path}/db.sqlite",
            "storage_url": f"file://{tmp_path}/objects",
            "work_dir": tmp_path / "work",
            "default_model": default_model,
            "public_url": "http://testserver",
            "status_cache_seconds": 0,
            **overrides,
        }
    )
    api = create_app(settings)
    with api.state.sessions() as db:
        create_team(db, "alpha", quota=100_000)
        key = create_key(db, "alpha")
    return api, settings, key


def form_csrf(client, path: str = "/ui/login") -> str:
    """The CSRF token in the form a dashboard page hands this client."""
    import re

    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def ui_login(client, key: str):
    """Sign ``client`` in to the dashboard as a browser does: the form, then its post."""
    data = {"api_key": key, "csrf": form_csrf(client)}
    r = client.post("/ui/login", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


# ---- the REST API with a real database and the embedded worker (app and workers tests)
@pytest.fixture(params=["sqlite", "postgres"])
def service(request, tiny_generator, tmp_path, monkeypatch):
    """(client, keys of teams alpha, beta and ops (admin), an embedded worker, the app) on
    SQLite and on a PostgreSQL database of this run's own."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.auth import create_key, create_team
    from jobstore.settings import Settings
    from model_store.loader import load_generator
    from workers.embedded import EmbeddedWorker

    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    url = f"sqlite:///{tmp_path}/db.sqlite" if request.param == "sqlite" else postgres_url()
    from jobstore.session import get_engine

    get_engine.cache_clear()
    settings = Settings(
        database_url=url,
        storage_url=f"file://{tmp_path}/store",
        work_dir=tmp_path / "work",
        default_model=tiny_generator.name,
        shard_identities=2,
        sampler_batch_size=4,
        public_url="http://testserver",
        status_cache_seconds=0,  # these tests poll a worker in this process: see every change
    )
    api = create_app(settings)
    with api.state.sessions() as db:
        create_team(db, "alpha", quota=10_000)
        create_team(db, "beta", quota=10_000)
        create_team(db, "ops", quota=0, is_admin=True)
        keys = {t: create_key(db, t) for t in ("alpha", "beta", "ops")}
    client = TestClient(api)
    worker = EmbeddedWorker(api.state.sessions, settings, poll_s=0.05)
    yield client, keys, worker, api
    worker.stop()
    get_engine(url).dispose()


def auth(key):
    """The API key as a bearer token."""
    return {"Authorization": f"Bearer {key}"}


ORDER = {
    "identities": 3,
    "images_per_identity": 2,
    "steps": 2,
    "seed": 7,
    "formats": ["imagefolder", "recordio"],
    "tau_consistency": -1.0,
    "tau_leak": 1.0,
}


def drain(worker):
    """Run queued work in this process until none is left."""
    while worker.run_once():
        pass


def toy_bin(path):
    """A small insightface .bin of generated faces (10 pairs each way), for the probe."""
    import numpy as np

    from vigface.data import write_bin

    rng = np.random.default_rng(3)
    jpgs, same = [], []
    for i in range(20):
        a = synthetic_identity_images(rng, 200 + i % 5, 2)
        b = synthetic_identity_images(rng, 200 + (i + 1) % 5, 1)
        jpgs += [jpeg_bytes(a[0]), jpeg_bytes(a[1] if i % 2 == 0 else b[0])]
        same.append(i % 2 == 0)
    write_bin(path, jpgs, same)
    return path


def image_requests(n, rng_seed, job_seed, image_index, dim=8):
    """``n`` image requests with random prototypes and landmarks, one identity each."""
    from vigface.sampling import ImageRequest, image_seed

    rng = np.random.default_rng(rng_seed)
    return [
        ImageRequest(
            rng.normal(size=dim).astype(np.float32),
            rng.uniform(30, 80, (5, 2)).astype(np.float32),
            image_seed(job_seed, i, image_index),
        )
        for i in range(n)
    ]
