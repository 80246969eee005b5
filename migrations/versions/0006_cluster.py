"""Cluster mode: the node registry and the claims on the report queues.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MOMENT = sa.DateTime(timezone=True)
QUEUES = ("commitment_request", "ups_event_report")


def upgrade() -> None:
    for table in QUEUES:
        # Nullable columns: no table rewrite on PostgreSQL, a plain ADD COLUMN on SQLite.
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
            batch.add_column(sa.Column("claimed_until", MOMENT, nullable=True))
    op.create_table(
        "cluster_node",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", MOMENT, nullable=False),
        sa.Column("last_seen", MOMENT, nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
        sa.Column("stopped_at", MOMENT, nullable=True),
        sa.Column("http_url", sa.String(length=256), nullable=False),
        sa.Column("dicom_address", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_cluster_node")),
        sa.UniqueConstraint("name", name=op.f("uq_cluster_node_name")),
    )


def downgrade() -> None:
    op.drop_table("cluster_node")
    for table in QUEUES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("claimed_until")
            batch.drop_column("claimed_by")
