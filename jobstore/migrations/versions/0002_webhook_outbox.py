"""webhook outbox, allocated-identities counter, index for listing a team's jobs

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("msg_id", sa.String(length=100), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("msg_id"),
    )
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("identities_allocated", sa.Integer(), nullable=False, server_default="0")
        )
    # existing jobs: their shards' prototype lists (json_array_length: SQLite and PostgreSQL)
    as_json = "JSON" if op.get_bind().dialect.name == "postgresql" else "TEXT"
    op.execute(
        "UPDATE jobs SET identities_allocated = (SELECT COALESCE(SUM(json_array_length("
        f"CAST(shards.prototypes AS {as_json}))), 0) FROM shards WHERE shards.job_id = jobs.id)"
    )
    op.create_index("ix_jobs_team_created", "jobs", ["team_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_team_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("identities_allocated")
    op.drop_index("ix_webhook_deliveries_status", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_job_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
