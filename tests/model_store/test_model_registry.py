"""`vigface models push` and pull-by-hash into a worker's cache (local folder and S3)."""

import pytest

from model_store import ModelNotFound
from model_store.loader import load_generator, locate
from model_store.remote import content_hash, pull, push
from model_store.storage import LocalStore, open_store


def test_push_and_pull_by_content_hash(tiny_generator, tmp_path):
    store = LocalStore(tmp_path / "objects")
    digest = push(store, tiny_generator, "tiny")
    assert digest == content_hash(tiny_generator)
    assert store.read_bytes("models/tiny/LATEST").decode() == digest
    assert not any("checkpoints" in k for k in store.list("models/tiny"))
    local = pull(store, "tiny", tmp_path / "cache")
    assert local == tmp_path / "cache" / "tiny" / digest and content_hash(local) == digest
    assert pull(store, "tiny", tmp_path / "cache") == local  # cached: no second download
    with pytest.raises(LookupError):
        pull(store, "tiny", tmp_path / "cache", digest="0" * 64)


def test_worker_loads_a_model_that_exists_only_in_s3(tiny_generator, s3_env, tmp_path, monkeypatch):
    endpoint, bucket = s3_env
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tmp_path / "empty"))
    store = open_store(f"s3://{bucket}/reg", endpoint)
    digest = push(store, tiny_generator, "remote-tiny")
    load_generator.cache_clear()
    gen = load_generator("remote-tiny", f"s3://{bucket}/reg", endpoint, str(tmp_path / "cache"))
    assert gen.card["kind"] == "generator"
    assert (tmp_path / "cache" / "remote-tiny" / digest / ".complete").is_file()
    with pytest.raises(ModelNotFound, match="neither local"):
        locate("absent", f"s3://{bucket}/reg", endpoint, str(tmp_path / "cache"))


def test_vigface_generate_takes_a_model_that_exists_only_in_the_registry(
    tiny_generator, tmp_path, monkeypatch
):
    """The CLI loads models the way the workers do: a name pushed to the deployment's
    registry (VIGFACE_STORAGE_URL) and on no local store is pulled and drawn from."""
    from typer.testing import CliRunner

    from app.cli import app

    objects = tmp_path / "objects"
    push(LocalStore(objects), tiny_generator, "pushed-tiny")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tmp_path / "empty"))
    monkeypatch.setenv("VIGFACE_STORAGE_URL", f"file://{objects}")
    monkeypatch.setenv("VIGFACE_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(
        app,
        ["generate", "--model", "pushed-tiny", "--identities", "2", "--images-per-identity",
         "1", "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "ds")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "ds" / "imagefolder").glob("*/*.jpg"))) == 2
    args = ["generate", "--model", "nowhere", "--identities", "1", "--images-per-identity", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "neither local nor in the model registry" in r.output
