"""identity ledger keyed by each row's own digest, so W_V can grow without touching sold rows

Revision ID: 0007
Revises: 0006

Before, a sold identity was (digest of the whole W_V, row index): appending rows to W_V (``vigface
extend-virtual``) changed the digest and so would have made every sold row free again. Now
each row is keyed by its own digest (``prototype_key``, unique) and grouped by the key of its
model's row 0 (``lineage``). Rows sold before are re-keyed from the model their name resolves
to now; a row whose model no longer resolves gets a key made from its old (set, index) pair,
which no row digest can equal, and is reported.
"""

import hashlib
import logging

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _keys_of(name: str):
    try:
        from model_store import resolve
        from model_store.description import describe_folder

        desc = describe_folder(name, resolve(name))
        return desc.prototype_set, list(desc.row_keys)
    except Exception:  # noqa: BLE001 - any reason a name no longer resolves
        log.warning("ledger: model %r no longer resolves; its rows keep their old keys", name)
        return None, None


def _orphan_key(prototype_set: str, prototype_id: int) -> str:
    return hashlib.sha256(f"orphan:{prototype_set}:{prototype_id}".encode()).hexdigest()


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("identity_ledger") as batch:
        batch.add_column(sa.Column("prototype_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lineage", sa.String(length=64), nullable=True))
    rows = bind.execute(
        sa.text("SELECT id, model, prototype_set, prototype_id FROM identity_ledger")
    ).fetchall()
    resolved: dict = {}
    for row_id, model, prototype_set, prototype_id in rows:
        if model not in resolved:
            resolved[model] = _keys_of(model)
        current_set, keys = resolved[model]
        if keys is not None and current_set == prototype_set and prototype_id < len(keys):
            key, lineage = keys[prototype_id], keys[0]
        else:
            key, lineage = _orphan_key(prototype_set, prototype_id), prototype_set
        bind.execute(
            sa.text("UPDATE identity_ledger SET prototype_key = :k, lineage = :l WHERE id = :i"),
            {"k": key, "l": lineage, "i": row_id},
        )
    if bind.dialect.name == "postgresql":
        op.drop_constraint(
            "uq_identity_ledger_prototype_set_prototype_id", "identity_ledger", "unique"
        )
        op.alter_column("identity_ledger", "prototype_key", nullable=False)
        op.alter_column("identity_ledger", "lineage", nullable=False)
        op.create_unique_constraint(
            "uq_identity_ledger_prototype_key", "identity_ledger", ["prototype_key"]
        )
    else:  # SQLite: recreate the table with the new constraint
        with op.batch_alter_table(
            "identity_ledger", naming_convention=NAMING, recreate="always"
        ) as batch:
            batch.drop_constraint("uq_identity_ledger_prototype_set_prototype_id", type_="unique")
            batch.alter_column("prototype_key", nullable=False)
            batch.alter_column("lineage", nullable=False)
            batch.create_unique_constraint("uq_identity_ledger_prototype_key", ["prototype_key"])
    op.create_index("ix_identity_ledger_lineage", "identity_ledger", ["lineage"])


def downgrade() -> None:
    op.drop_index("ix_identity_ledger_lineage", "identity_ledger")
    with op.batch_alter_table("identity_ledger", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_identity_ledger_prototype_key", type_="unique")
        batch.create_unique_constraint(
            "uq_identity_ledger_prototype_set_prototype_id", ["prototype_set", "prototype_id"]
        )
        batch.drop_column("lineage")
        batch.drop_column("prototype_key")
