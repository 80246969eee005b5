"""Unified Procedure Step workitems, their subscriptions and the event reports to deliver.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEXT = sa.String(length=256)
UID = sa.String(length=64)
AE = sa.String(length=16)
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ups_workitem",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("transaction_uid", UID, nullable=False),
        sa.Column("performer_ae_title", AE, nullable=False),
        sa.Column("calling_ae_title", AE, nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("input_readiness_state", sa.String(length=16), nullable=False),
        sa.Column("procedure_step_label", TEXT, nullable=False),
        sa.Column("worklist_label", TEXT, nullable=False),
        sa.Column("patient_id", TEXT, nullable=False),
        sa.Column("patient_name", TEXT, nullable=False),
        sa.Column("start_datetime", sa.String(length=32), nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("updated_at", MOMENT, nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_workitem")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_ups_workitem_sop_instance_uid")),
    )
    for column in ("state", "worklist_label", "patient_id", "start_datetime"):
        op.create_index(op.f(f"ix_ups_workitem_{column}"), "ups_workitem", [column])
    op.create_table(
        "ups_subscription",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("workitem_fk", KEY, nullable=False),
        sa.Column("ae_title", AE, nullable=False),
        sa.Column("deletion_lock", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workitem_fk"],
            ["ups_workitem.pk"],
            name=op.f("fk_ups_subscription_workitem_fk_ups_workitem"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_subscription")),
    )
    op.create_index(op.f("ix_ups_subscription_ae_title"), "ups_subscription", ["ae_title"])
    op.create_index(
        "uq_ups_subscription_workitem", "ups_subscription", ["workitem_fk", "ae_title"], unique=True
    )
    op.create_table(
        "ups_global_subscription",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("ae_title", AE, nullable=False),
        sa.Column("deletion_lock", sa.Boolean(), nullable=False),
        sa.Column("match_keys", JSON, nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_global_subscription")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_ups_global_subscription_ae_title")),
    )
    op.create_table(
        "ups_event_report",
        sa.Column("pk", KEY, nullable=False),
        sa.Column("ae_title", AE, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("information", JSON, nullable=False),
        sa.Column("created_at", MOMENT, nullable=False),
        sa.Column("next_attempt_at", MOMENT, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_event_report")),
    )
    for column in ("ae_title", "next_attempt_at"):
        op.create_index(op.f(f"ix_ups_event_report_{column}"), "ups_event_report", [column])


def downgrade() -> None:
    op.drop_table("ups_event_report")
    op.drop_table("ups_global_subscription")
    op.drop_table("ups_subscription")
    op.drop_table("ups_workitem")
