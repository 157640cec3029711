"""Object stores: the local folder and S3 against moto's server over real HTTP."""

import httpx
import pytest

from model_store.storage import LocalStore, ObjectStore, open_store, put_dir


def test_s3_round_trip_multipart_and_presigned(s3_env, tmp_path):
    endpoint, bucket = s3_env
    store = open_store(f"s3://{bucket}/prod", endpoint_url=endpoint)
    big = tmp_path / "d" / "big.bin"
    big.parent.mkdir()
    payload = bytes(range(256)) * (40 * 2**12)  # 10 MiB: crosses the multipart threshold
    big.write_bytes(payload)
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "a.txt").write_text("hello")
    keys = put_dir(store, "jobs/1", tmp_path / "d")
    assert keys == ["jobs/1/big.bin", "jobs/1/sub/a.txt"]
    assert store.list("jobs/1") == keys
    assert store.read_bytes("jobs/1/big.bin") == payload
    link = store.link("jobs/1/sub/a.txt", plain_link=lambda k: "never used for S3")
    assert "X-Amz-Signature" in link and httpx.get(link).text == "hello"
    assert store.exists("jobs/1/sub/a.txt") and not store.exists("jobs/1/nope")
    assert store.size("jobs/1/big.bin") == len(payload)
    assert b"".join(store.iter_bytes("jobs/1/big.bin", 2**20)) == payload
    store.ping()


def test_local_store_refuses_escaping_keys(tmp_path):
    store = LocalStore(tmp_path / "s")
    (tmp_path / "f.txt").write_text("x")
    store.put_file("a/b.txt", tmp_path / "f.txt")
    assert store.read_bytes("a/b.txt") == b"x" and store.list("a") == ["a/b.txt"]
    assert b"".join(store.iter_bytes("a/b.txt")) == b"x" and store.size("a/b.txt") == 1
    assert store.link("a/b.txt", lambda k: f"http://api/files/{k}") == "http://api/files/a/b.txt"
    with pytest.raises(ValueError, match="escapes"):
        store.put_file("../evil.txt", tmp_path / "f.txt")
    with pytest.raises(ValueError, match="scheme"):
        open_store("ftp://x")


def test_both_stores_fulfil_the_protocol(s3_env, tmp_path):
    """Callers hold an ObjectStore and never ask which one: every method exists on both."""
    endpoint, bucket = s3_env
    methods = [m for m in vars(ObjectStore) if not m.startswith("_")]
    assert {"put_file", "list", "link", "iter_bytes", "size", "download"} <= set(methods)
    for store in (LocalStore(tmp_path / "s"), open_store(f"s3://{bucket}/p", endpoint)):
        assert all(callable(getattr(store, m)) for m in methods), type(store).__name__


def test_put_dir_resumes_and_retrying_waits_out_an_outage(tmp_path):
    from model_store.storage import LocalStore, StoreUnavailable, put_dir, retrying

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.bin").write_bytes(b"x" * 10)
    (src / "y.bin").write_bytes(b"y")
    store = LocalStore(tmp_path / "store")
    sent = []
    real_put = store.put_file
    store.put_file = lambda key, f: (sent.append(key), real_put(key, f))
    assert put_dir(store, "p", src) == ["p/a/x.bin", "p/y.bin"]
    assert sent == ["p/a/x.bin", "p/y.bin"]
    (src / "y.bin").write_bytes(b"changed")
    sent.clear()
    put_dir(store, "p", src)  # only what differs goes again
    assert sent == ["p/y.bin"] and store.read_bytes("p/y.bin") == b"changed"

    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("endpoint down")
        return "ok"

    assert retrying(flaky, window_s=5, first_wait_s=0.01) == "ok"
    assert calls == {"n": 3}
    with pytest.raises(StoreUnavailable, match="unavailable for 0 s"):
        retrying(lambda: 1 / 0, window_s=0.05, first_wait_s=0.01)
    with pytest.raises(ValueError):  # a key outside the store is not transient
        retrying(lambda: store.put_file("../escape", src / "y.bin"), window_s=5)
