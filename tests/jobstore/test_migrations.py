"""Migrations on a database that already sold identities: the ledger is re-keyed by the
prototype set's digest (0003) and then by each row's own digest (0007), so sales made under
the old keys still block the same prototypes."""

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from conftest import postgres_url
from jobstore.migrate import upgrade
from model_store.description import describe


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
    upgrade(url, "0006")  # 0003: keyed by the prototype set's digest
    desc = describe("demo")
    with eng.begin() as c:
        keys = {r[0] for r in c.execute(text("SELECT prototype_set FROM identity_ledger"))}
        assert keys == {desc.prototype_set}
        assert c.execute(text("SELECT prototype_set FROM jobs")).scalar() == desc.prototype_set
    upgrade(url)  # 0007: keyed by each row's own digest, grouped by the lineage
    with eng.begin() as c:
        rows = c.execute(
            text("SELECT prototype_id, prototype_key, lineage FROM identity_ledger ORDER BY 1")
        ).all()
        assert rows == [(p, desc.row_keys[p], desc.lineage) for p in (0, 1)]
    with pytest.raises(IntegrityError), eng.begin() as c:  # the same row, another name
        c.execute(
            text(
                "INSERT INTO identity_ledger (model, prototype_key, lineage, prototype_set, "
                f"prototype_id, job_id, created_at) VALUES ('demo-copy', '{desc.row_keys[1]}', "
                f"'{desc.lineage}', 'x', 7, 'j1', '2026-11-02')"
            )
        )
    with eng.begin() as c:  # another row of the same lineage is free to sell
        c.execute(
            text(
                "INSERT INTO identity_ledger (model, prototype_key, lineage, prototype_set, "
                f"prototype_id, job_id, created_at) VALUES ('demo', '{desc.row_keys[2]}', "
                f"'{desc.lineage}', '{desc.prototype_set}', 2, 'j1', '2026-11-02')"
            )
        )
    eng.dispose()
