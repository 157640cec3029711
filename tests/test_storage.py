"""Object stores: the local folder and S3 against moto's server over real HTTP."""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from model_store.storage import LocalStore, open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """moto's standalone S3 server on 127.0.0.1 (not an in-process mock)."""
    port = _free_port()
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
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket="datasets")
    return moto_server


def test_s3_round_trip_multipart_and_presigned(s3_env, tmp_path):
    store = open_store("s3://datasets/prod", endpoint_url=s3_env)
    big = tmp_path / "d" / "big.bin"
    big.parent.mkdir()
    payload = bytes(range(256)) * (40 * 2**12)  # 10 MiB: crosses the multipart threshold
    big.write_bytes(payload)
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "a.txt").write_text("hello")
    keys = store.put_dir("jobs/1", tmp_path / "d")
    assert keys == ["jobs/1/big.bin", "jobs/1/sub/a.txt"]
    assert store.list("jobs/1") == keys
    assert store.read_bytes("jobs/1/big.bin") == payload
    link = store.url("jobs/1/sub/a.txt")
    assert "X-Amz-Signature" in link and httpx.get(link).text == "hello"
    assert store.exists("jobs/1/sub/a.txt") and not store.exists("jobs/1/nope")
    store.ping()


def test_local_store_refuses_escaping_keys(tmp_path):
    store = LocalStore(tmp_path / "s")
    (tmp_path / "f.txt").write_text("x")
    store.put_file("a/b.txt", tmp_path / "f.txt")
    assert store.read_bytes("a/b.txt") == b"x" and store.list("a") == ["a/b.txt"]
    with pytest.raises(ValueError, match="escapes"):
        store.put_file("../evil.txt", tmp_path / "f.txt")
    with pytest.raises(ValueError, match="scheme"):
        open_store("ftp://x")
