"""Growing a model's stock of virtual identities (vigface extend-virtual) without touching
what was sold: rows keep their keys, sold rows stay sold in the extended copy, and an order
of 10,000 identities is accepted and written to the ledger in one transaction."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app as cli
from vigface.fr_model import FRModel
from vigface.training.virtual_extend import CapacityExceeded, extend_virtual


def test_extension_appends_rows_under_its_bounds_and_moves_none(tiny_generator):
    fr = FRModel.load(tiny_generator / "fr")
    out, ext = extend_virtual(fr, 30, max_real_cos=0.95, max_virtual_cos=0.95, seed=1)
    k = fr.virtual_prototypes.shape[0]
    assert out.virtual_prototypes.shape[0] == k + 30 and ext.added == 30
    assert (out.virtual_prototypes[:k] == fr.virtual_prototypes).all()  # never moved
    import torch.nn.functional as F

    new = F.normalize(out.virtual_prototypes[k:].float(), dim=1)
    real = F.normalize(fr.real_prototypes.float(), dim=1)
    everyone = F.normalize(out.virtual_prototypes.float(), dim=1)
    assert float((new @ real.T).max()) <= 0.95 + 1e-5
    sims = new @ everyone.T
    sims[range(30), range(k, k + 30)] = -1  # not itself
    assert float(sims.max()) <= 0.95 + 1e-5
    assert ext.rejected_near_real + ext.rejected_near_virtual <= ext.draws - 30  # the rest unused
    with pytest.raises(CapacityExceeded, match="only .* of 500 new rows fit"):
        extend_virtual(fr, 500, max_real_cos=0.2, max_virtual_cos=0.2, draw_budget=2000)


def test_sold_identities_stay_sold_in_the_extended_model(tiny_generator, tmp_path, monkeypatch):
    from conftest import embedded_service, postgres_url
    from model_store.description import describe

    store = tmp_path / "store"
    store.mkdir()
    import shutil

    shutil.copytree(tiny_generator, store / "base")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, settings, key = embedded_service(
        tmp_path, "base", database_url=postgres_url(), shard_identities=50
    )
    from fastapi.testclient import TestClient

    c, h = TestClient(api), {"Authorization": f"Bearer {key}"}
    order = {"identities": 5, "images_per_identity": 1}
    sold = c.post("/v1/jobs", json=order, headers=h).json()
    assert sold["identities_allocated"] == 6
    before = {m["name"]: m for m in c.get("/v1/models", headers=h).json()}["base"]

    r = CliRunner().invoke(
        cli,
        ["extend-virtual", "--model", "base", "--add", "12100", "--max-real-cos", "0.999",
         "--max-virtual-cos", "0.9999", "--out", str(store / "big")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    card = json.loads((store / "big" / "model_card.json").read_text())
    assert card["capacity"]["virtual_identities"] == 40 + 12100
    assert card["capacity"]["max_virtual_cos"] == 0.9999
    describe.cache_clear()
    models = {m["name"]: m for m in c.get("/v1/models", headers=h).json()}
    assert models["big"]["virtual_identities"] == 12140
    assert models["big"]["free_virtual_identities"] == 12140 - 6  # the base's sales count here
    assert models["base"]["free_virtual_identities"] == before["free_virtual_identities"]

    big = {"identities": 10_000, "images_per_identity": 1, "model": "big"}
    r = c.post("/v1/jobs", json=big, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["identities_allocated"] == 12_000 and job["shards"] == {"queued": 200}
    models = {m["name"]: m for m in c.get("/v1/models", headers=h).json()}
    assert models["big"]["free_virtual_identities"] == 12140 - 6 - 12_000
    assert models["base"]["free_virtual_identities"] == 0  # its 34 rows went first: sold once
    r = c.post("/v1/jobs", json={**big, "identities": 200}, headers=h)
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "identities"
    assert "134 free virtual identities" in r.json()["detail"][0]["message"]


def test_a_shard_refuses_a_model_whose_rows_changed_and_runs_on_an_extended_one(
    tiny_generator, tmp_path, monkeypatch
):
    import shutil

    import torch
    from fastapi.testclient import TestClient

    from conftest import embedded_service
    from workers.embedded import EmbeddedWorker

    store = tmp_path / "store"
    shutil.copytree(tiny_generator, store / "m")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, settings, key = embedded_service(tmp_path, "m", shard_identities=2, sampler_batch_size=4)
    c, h = TestClient(api), {"Authorization": f"Bearer {key}"}
    order = {"identities": 2, "images_per_identity": 1, "steps": 2}
    grown, changed = (c.post("/v1/jobs", json=order, headers=h).json() for _ in range(2))
    worker = EmbeddedWorker(api.state.sessions, settings)
    fr = FRModel.load(store / "m" / "fr")
    extended, _ = extend_virtual(fr, 5, max_real_cos=0.999, max_virtual_cos=0.9999)
    extended.save(store / "m" / "fr")  # rows appended: every job's rows are where they were
    from model_store.loader import load_generator

    load_generator.cache_clear()
    worker.run_once()
    assert c.get(f"/v1/jobs/{grown['id']}", headers=h).json()["status"] == "succeeded"
    shuffled = FRModel.load(store / "m" / "fr")
    shuffled.virtual_prototypes = torch.flip(shuffled.virtual_prototypes, [0])
    shuffled.save(store / "m" / "fr")  # the same name, other faces at the bought rows
    load_generator.cache_clear()
    while worker.run_once():
        pass
    failed = c.get(f"/v1/jobs/{changed['id']}", headers=h).json()
    assert failed["status"] == "failed" and "holds other virtual prototypes" in failed["error"]


def test_a_small_order_is_not_held_behind_a_500_by_20_one(tiny_generator, tmp_path, monkeypatch):
    """Shards of live jobs interleave: team beta's 2 x 2 order, placed while alpha's 500 x 20
    order (10 shards of 50 identities) runs, is done within two shard-times of its submission,
    through the embedded worker and the Celery path's run_next_shard alike."""
    import shutil

    from fastapi.testclient import TestClient

    from app.services.auth import create_key, create_team
    from conftest import embedded_service
    from workers.embedded import EmbeddedWorker
    from workers.runner import run_next_shard

    store = tmp_path / "store"
    shutil.copytree(tiny_generator, store / "m")
    fr = FRModel.load(store / "m" / "fr")
    extend_virtual(fr, 600, max_real_cos=0.999, max_virtual_cos=0.9999)[0].save(store / "m" / "fr")
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, settings, alpha = embedded_service(tmp_path, "m", sampler_batch_size=64)
    with api.state.sessions() as db:
        create_team(db, "beta", quota=100)
        beta = create_key(db, "beta")
    c = TestClient(api)
    order = {"steps": 1, "tau_consistency": -1.0, "tau_leak": 1.0}
    big = c.post(
        "/v1/jobs", json={**order, "identities": 500, "images_per_identity": 20},
        headers={"X-API-Key": alpha},
    ).json()  # fmt: skip
    assert big["shards"] == {"queued": 10}, big
    worker = EmbeddedWorker(api.state.sessions, settings)
    for _ in range(2):
        assert worker.run_once()  # the big order is running
    small = c.post(
        "/v1/jobs", json={**order, "identities": 2, "images_per_identity": 2},
        headers={"X-API-Key": beta},
    ).json()  # fmt: skip
    assert small["eta_seconds"] is not None  # from the shards the big order has run
    for _ in range(2):
        run_next_shard(api.state.sessions, settings)  # as a Celery message does
        state = c.get(f"/v1/jobs/{small['id']}", headers={"X-API-Key": beta}).json()
        if state["status"] == "succeeded":
            break
    assert state["status"] == "succeeded", state
    running = c.get(f"/v1/jobs/{big['id']}", headers={"X-API-Key": alpha}).json()
    assert running["status"] == "running" and running["shards"]["succeeded"] <= 3
