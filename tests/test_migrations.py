"""Migrations on a database that already sold identities: the ledger is re-keyed by the
prototype set's digest, so sales made under the old name still block the same prototypes."""

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from conftest import postgres_url
from model_store.description import describe
from workers.db.migrate import upgrade


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ledger_rows_sold_before_0003_keep_blocking_their_prototypes(backend, tmp_path):
    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else postgres_url()
    upgrade(url, "0002")
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO teams (name, is_admin, monthly_quota, created_at) "
                "VALUES ('alpha', false, 10, '2026-11-01')"
            )
        )
        c.execute(
            text(
                "INSERT INTO jobs (id, team_id, status, model, spec, priority, images_requested, "
                "images_done, identities_allocated, progress, cancel_requested, created_at) VALUES "
                "('j1', 1, 'succeeded', 'demo', '{}', 5, 1, 1, 2, '{}', false, '2026-11-01')"
            )
        )
        for p in (0, 1):
            c.execute(
                text(
                    "INSERT INTO identity_ledger (model, prototype_id, job_id, created_at) "
                    f"VALUES ('demo', {p}, 'j1', '2026-11-01')"
                )
            )
    upgrade(url)
    digest = describe("demo").prototype_set
    with eng.begin() as c:
        keys = {r[0] for r in c.execute(text("SELECT prototype_set FROM identity_ledger"))}
        assert keys == {digest}
        assert c.execute(text("SELECT prototype_set FROM jobs")).scalar() == digest
    with pytest.raises(IntegrityError), eng.begin() as c:  # the same prototype, another name
        c.execute(
            text(
                "INSERT INTO identity_ledger (model, prototype_set, prototype_id, job_id, "
                f"created_at) VALUES ('demo-copy', '{digest}', 1, 'j1', '2026-11-02')"
            )
        )
    eng.dispose()
