"""`vigface serve` as a user runs it (embedded worker, SQLite, local store), the admin CLI,
the Python client and `vigface jobs` against it over real HTTP."""

import json
import os
import subprocess
import sys

import pytest

from app.client import APIError, VIGFaceClient
from app.local_service import running_service
from conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tiny_generator, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "VIGFACE_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
        "VIGFACE_STORAGE_URL": f"file://{tmp_path}/store",
        "VIGFACE_WORK_DIR": str(tmp_path / "w"),
        "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
        "VIGFACE_DEFAULT_MODEL": tiny_generator.name,
        "VIGFACE_PORT": str(port),
        "VIGFACE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VIGFACE_SAMPLER_BATCH_SIZE": "4",
        "OMP_NUM_THREADS": "1",
    }

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("admin", "create-team", "alpha").returncode == 0
    r = cli("admin", "create-key", "alpha")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("vgf_")
    bad = cli("admin", "create-key", "nobody")
    assert bad.returncode == 2 and "nobody" in bad.stderr
    with running_service(env, port) as url:
        yield url, key, cli


def test_client_submits_waits_and_downloads(server, tmp_path):
    url, key, cli = server
    c = VIGFaceClient(url, key)
    job = c.submit(
        identities=2,
        images_per_identity=2,
        steps=2,
        tau_consistency=-1.0,
        tau_leak=1.0,
        formats=["imagefolder", "webdataset"],
    )
    job = c.wait(job["id"], poll_s=0.2, timeout_s=120, progress=False)
    assert job["status"] == "succeeded" and job["images_done"] == 4
    files = c.download(job["id"], "imagefolder", tmp_path / "dl")
    assert len([f for f in files if f.suffix == ".jpg"]) == 4
    assert json.loads((tmp_path / "dl" / "dataset_card.json").read_text())["num_image"] == 4
    with pytest.raises(APIError, match="recordio"):
        c.download(job["id"], "recordio", tmp_path / "x")
    # resume: a complete file is not fetched again, a missing one is
    (tmp_path / "dl" / "manifest.csv").unlink()
    again = c.download(job["id"], "all", tmp_path / "dl")
    assert (tmp_path / "dl" / "manifest.csv").is_file()
    assert {f.relative_to(tmp_path / "dl").parts[0] for f in again} >= {"imagefolder", "webdataset"}
    # the whole dataset as one tar, byte for byte the same files
    import tarfile

    tar = c.archive(job["id"], tmp_path / "all.tar")
    with tarfile.open(tar) as t:
        names = {m.name.split("/", 1)[1]: m for m in t.getmembers()}
        assert set(names) == {f.relative_to(tmp_path / "dl").as_posix() for f in again}
        card = t.extractfile(names["dataset_card.json"]).read()
    assert card == (tmp_path / "dl" / "dataset_card.json").read_bytes()
    r = cli("jobs", "status", job["id"], "--url", url, "--api-key", key)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "succeeded"
    r = cli("jobs", "list", "--url", url, "--api-key", key)
    assert r.returncode == 0 and job["id"] in r.stdout and "succeeded" in r.stdout
    r = cli("jobs", "cancel", job["id"], "--url", url, "--api-key", key)
    assert r.returncode == 0 and r.stdout.strip() == "succeeded"  # finished: stays as it is
    r = cli("jobs", "status", "nope", "--url", url, "--api-key", key)
    assert r.returncode == 2 and r.stderr.strip().endswith("job_id: no such job")
    r = cli(
        "jobs",
        "download",
        job["id"],
        "--format",
        "webdataset",
        "--out",
        str(tmp_path / "wds"),
        "--url",
        url,
        "--api-key",
        key,
    )
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "wds" / "webdataset").glob("*.tar"))
    r = cli(
        "jobs",
        "submit",
        "--identities",
        "0",
        "--images-per-identity",
        "1",
        "--url",
        url,
        "--api-key",
        key,
    )
    assert r.returncode == 2 and "identities" in r.stderr
