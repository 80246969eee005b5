"""Modality Worklist items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sa.String(length=256)
UID = sa.String(length=64)
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "worklist_item",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("patient_id", TEXT, nullable=False),
        sa.Column("patient_name", TEXT, nullable=False),
        sa.Column("accession_number", TEXT, nullable=False),
        sa.Column("requested_procedure_id", TEXT, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("scheduled_procedure_step_id", TEXT, nullable=False),
        sa.Column("scheduled_station_ae_title", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("start_date", sa.String(length=16), nullable=False),
        sa.Column("start_time", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_worklist_item")),
    )
    op.create_index(
        "uq_worklist_item_step",
        "worklist_item",
        ["accession_number", "requested_procedure_id", "scheduled_procedure_step_id"],
        unique=True,
    )
    for column in ("patient_id", "scheduled_station_ae_title", "start_date"):
        op.create_index(op.f(f"ix_worklist_item_{column}"), "worklist_item", [column])


def downgrade() -> None:
    op.drop_table("worklist_item")
