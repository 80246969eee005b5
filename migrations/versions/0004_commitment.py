"""Storage Commitment requests, kept until their report is delivered.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID = sa.String(length=64)
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "commitment_request",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("transaction_uid", UID, nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=256), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("references", JSON, nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_commitment_request")),
        sa.UniqueConstraint("transaction_uid", name=op.f("uq_commitment_request_transaction_uid")),
    )
    for column in ("state", "next_attempt_at"):
        op.create_index(op.f(f"ix_commitment_request_{column}"), "commitment_request", [column])


def downgrade() -> None:
    op.drop_table("commitment_request")
