"""Index schema: patient, study, series, instance.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sa.String(length=256)
UID = sa.String(length=64)
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patient",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("patient_id", TEXT, nullable=False),
        sa.Column("issuer_of_patient_id", TEXT, nullable=False),
        sa.Column("patient_name", TEXT, nullable=False),
        sa.Column("patient_birth_date", sa.String(length=16), nullable=False),
        sa.Column("patient_sex", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_patient")),
    )
    op.create_index("ix_patient_patient_name", "patient", ["patient_name"])
    op.create_index(
        "uq_patient_identity",
        "patient",
        ["patient_id", "issuer_of_patient_id"],
        unique=True,
        sqlite_where=sa.text("patient_id <> ''"),
        postgresql_where=sa.text("patient_id <> ''"),
    )

    op.create_table(
        "study",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("patient_fk", KEY, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("study_date", sa.String(length=16), nullable=False),
        sa.Column("study_time", sa.String(length=32), nullable=False),
        sa.Column("accession_number", TEXT, nullable=False),
        sa.Column("study_id", TEXT, nullable=False),
        sa.Column("referring_physician_name", TEXT, nullable=False),
        sa.Column("study_description", TEXT, nullable=False),
        sa.Column("modalities_in_study", TEXT, nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patient.pk"], name=op.f("fk_study_patient_fk_patient")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_study")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_study_study_instance_uid")),
    )
    for column in ("accession_number", "patient_fk", "study_date", "study_id"):
        op.create_index(op.f(f"ix_study_{column}"), "study", [column])

    op.create_table(
        "series",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("study_fk", KEY, nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series_number", sa.BigInteger(), nullable=True),
        sa.Column("series_description", TEXT, nullable=False),
        sa.Column("body_part_examined", TEXT, nullable=False),
        sa.Column("series_date", sa.String(length=16), nullable=False),
        sa.Column("series_time", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["study_fk"], ["study.pk"], name=op.f("fk_series_study_fk_study")),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    for column in ("modality", "study_fk"):
        op.create_index(op.f(f"ix_series_{column}"), "series", [column])

    op.create_table(
        "instance",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("series_fk", KEY, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("instance_number", sa.BigInteger(), nullable=True),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("file_path", sa.String(length=512), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column(
            "header",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["series_fk"], ["series.pk"], name=op.f("fk_instance_series_fk_series")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_instance")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instance_sop_instance_uid")),
    )
    for column in ("series_fk", "sop_class_uid"):
        op.create_index(op.f(f"ix_instance_{column}"), "instance", [column])


def downgrade() -> None:
    op.drop_table("instance")
    op.drop_table("series")
    op.drop_table("study")
    op.drop_table("patient")
