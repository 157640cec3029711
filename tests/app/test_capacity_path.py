"""The documented path to a model that sells 100,000 identities: one command writes the
extension into the data home's store, the service lists it at once with its free count (one
ledger with the model it extends), and a 10,000-identity order on it is admitted within 10 s
on PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import postgres_url

pytestmark = pytest.mark.slow
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def documented_command() -> list[str]:
    """The training guide's command for a 100,000-identity entry, as a user would copy it."""
    line = next(
        ln.strip() for ln in GUIDE.read_text().splitlines()
        if ln.strip().startswith("vigface extend-virtual") and "--to 100000" in ln
    )  # fmt: skip
    return re.sub(r"\s+#.*$", "", line).split()[1:]


def test_one_documented_command_makes_a_model_that_sells_100000_identities(tmp_path):
    from app.main import create_app
    from app.services.auth import create_key, create_team
    from jobstore.settings import Settings
    from model_store.description import describe

    home = tmp_path / "home"
    env = {**os.environ, "VIGFACE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("VIGFACE_MODEL_STORE", None)
    args = documented_command()
    r = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr
    name = args[args.index("--name") + 1]
    os.environ["VIGFACE_HOME"] = str(home)  # this process's store search path too
    describe.cache_clear()
    try:
        settings = Settings(home=home, database_url=postgres_url())
        api = create_app(settings)
        with api.state.sessions() as db:
            create_team(db, "big", quota=2_000_000_000)
            key = create_key(db, "big")
        c = TestClient(api)
        h = {"Authorization": f"Bearer {key}"}
        models = {m["name"]: m for m in c.get("/v1/models", headers=h).json()}
        assert models[name]["free_virtual_identities"] >= 100_000
        base = args[args.index("--model") + 1]
        assert base in models[name]["shares_ledger_with"]
        order = {"identities": 10_000, "images_per_identity": 2, "model": name,
                 "confirm_large": True}  # fmt: skip
        t0 = time.perf_counter()
        r = c.post("/v1/jobs", json=order, headers=h)
        admitted_s = time.perf_counter() - t0
        assert r.status_code == 202, r.text
        assert admitted_s < 10, admitted_s
        c.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)
    finally:
        os.environ.pop("VIGFACE_HOME", None)
        describe.cache_clear()
