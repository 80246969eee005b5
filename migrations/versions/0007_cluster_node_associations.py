"""Cluster mode: each node's open associations, written by its heartbeat.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: no table rewrite on PostgreSQL; the previous release's nodes leave it NULL.
    with op.batch_alter_table("cluster_node") as batch:
        batch.add_column(sa.Column("associations", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cluster_node") as batch:
        batch.drop_column("associations")
