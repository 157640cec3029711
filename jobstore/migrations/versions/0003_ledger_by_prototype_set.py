"""identity ledger keyed by the prototype set's digest; jobs record the digest they ran on

Revision ID: 0003
Revises: 0002

Before, the ledger was keyed by the model's name as the request gave it, so an alias (a path,
a trailing slash, a re-pushed copy) opened a second namespace for the same prototypes. Rows
sold before this migration are re-keyed by the digest of the model their name resolves to
now; a name that no longer resolves keeps ``name:<model>`` as its key (it cannot collide with
a digest) and is reported.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _digest_of(name: str) -> str:
    try:
        from model_store import resolve
        from model_store.description import describe_folder

        return describe_folder(name, resolve(name)).prototype_set
    except Exception:  # noqa: BLE001 - any reason a name no longer resolves
        log.warning(
            "ledger: model %r no longer resolves; its rows keep the key name:%s", name, name
        )
        return f"name:{name}"[:64]


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("jobs", sa.Column("prototype_set", sa.String(length=64), nullable=True))
    op.add_column(
        "identity_ledger", sa.Column("prototype_set", sa.String(length=64), nullable=True)
    )
    ledger = sa.table(
        "identity_ledger", sa.column("model", sa.String), sa.column("prototype_set", sa.String)
    )
    jobs = sa.table("jobs", sa.column("model", sa.String), sa.column("prototype_set", sa.String))
    names = [r[0] for r in bind.execute(sa.text("SELECT DISTINCT model FROM identity_ledger"))]
    names += [r[0] for r in bind.execute(sa.text("SELECT DISTINCT model FROM jobs"))]
    for name in sorted(set(names)):
        digest = _digest_of(name)
        bind.execute(ledger.update().where(ledger.c.model == name).values(prototype_set=digest))
        bind.execute(jobs.update().where(jobs.c.model == name).values(prototype_set=digest))
    if bind.dialect.name == "postgresql":
        op.drop_constraint("identity_ledger_model_prototype_id_key", "identity_ledger", "unique")
        op.alter_column("identity_ledger", "prototype_set", nullable=False)
        op.create_unique_constraint(
            "uq_identity_ledger_prototype_set_prototype_id",
            "identity_ledger",
            ["prototype_set", "prototype_id"],
        )
    else:  # SQLite: recreate the table; the old unique constraint is unnamed
        with op.batch_alter_table(
            "identity_ledger", naming_convention=NAMING, recreate="always"
        ) as batch:
            batch.drop_constraint("uq_identity_ledger_model_prototype_id", type_="unique")
            batch.alter_column("prototype_set", nullable=False)
            batch.create_unique_constraint(
                "uq_identity_ledger_prototype_set_prototype_id", ["prototype_set", "prototype_id"]
            )


def downgrade() -> None:
    with op.batch_alter_table("identity_ledger", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_identity_ledger_prototype_set_prototype_id", type_="unique")
        batch.create_unique_constraint(
            "uq_identity_ledger_model_prototype_id", ["model", "prototype_id"]
        )
        batch.drop_column("prototype_set")
    op.drop_column("jobs", "prototype_set")
