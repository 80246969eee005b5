"""Modality Performed Procedure Steps and the series they report.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sa.String(length=256)
UID = sa.String(length=64)
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mpps",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("performed_station_ae_title", sa.String(length=16), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("patient_id", TEXT, nullable=False),
        sa.Column("patient_name", TEXT, nullable=False),
        sa.Column("accession_number", TEXT, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("start_date", sa.String(length=16), nullable=False),
        sa.Column("start_time", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "attributes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_mpps")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_mpps_sop_instance_uid")),
    )
    for column in ("status", "patient_id", "study_instance_uid", "start_date"):
        op.create_index(op.f(f"ix_mpps_{column}"), "mpps", [column])
    op.create_table(
        "mpps_series",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("mpps_fk", KEY, nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("referenced_instances", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["mpps_fk"], ["mpps.pk"], name=op.f("fk_mpps_series_mpps_fk_mpps")),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_mpps_series")),
    )
    for column in ("mpps_fk", "series_instance_uid"):
        op.create_index(op.f(f"ix_mpps_series_{column}"), "mpps_series", [column])


def downgrade() -> None:
    op.drop_table("mpps_series")
    op.drop_table("mpps")
