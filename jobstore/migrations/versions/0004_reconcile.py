"""when each shard was last sent to the broker; the finalize step's lease

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shards", sa.Column("enqueued_at", sa.DateTime(), nullable=True))
    op.add_column("jobs", sa.Column("finalize_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finalize_expires_at")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("enqueued_at")
