"""The index schema: patient -> study -> series -> instance (PS3.4 C.6.1 information model).

Text columns hold DICOM values as decoded text (DA as YYYYMMDD, TM as received, multiple values
joined by backslash) clipped to INDEX_TEXT_LIMIT; `instance.header` keeps every non-bulk
attribute in the DICOM JSON model so that C-FIND can return any key. The schema changes only
through migrations/ (Alembic); `alembic check` in CI keeps these models and the migrations equal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)  # PS3.5 9.1: a UID is at most 64 characters
IndexText = String(256)  # matches dicom.header.INDEX_TEXT_LIMIT
JsonDocument = JSON().with_variant(JSONB(), "postgresql")
# 64-bit keys on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY is the rowid alias.
Key = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Patient(Base):
    """A patient, identified by Patient ID and Issuer of Patient ID when the ID is present."""

    __tablename__ = "patient"
    __table_args__ = (
        # An empty Patient ID identifies nobody: such studies each get their own patient row.
        Index(
            "uq_patient_identity",
            "patient_id",
            "issuer_of_patient_id",
            unique=True,
            sqlite_where=text("patient_id <> ''"),
            postgresql_where=text("patient_id <> ''"),
        ),
        Index("ix_patient_patient_name", "patient_name"),
    )

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    patient_id: Mapped[str] = mapped_column(IndexText)
    issuer_of_patient_id: Mapped[str] = mapped_column(IndexText)
    patient_name: Mapped[str] = mapped_column(IndexText)
    patient_birth_date: Mapped[str] = mapped_column(String(16))
    patient_sex: Mapped[str] = mapped_column(String(16))

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """A study (PS3.4 C.6.1.1.3 study level keys)."""

    __tablename__ = "study"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(Key, ForeignKey("patient.pk"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str] = mapped_column(String(16), index=True)
    study_time: Mapped[str] = mapped_column(String(32))
    accession_number: Mapped[str] = mapped_column(IndexText, index=True)
    study_id: Mapped[str] = mapped_column(IndexText, index=True)
    referring_physician_name: Mapped[str] = mapped_column(IndexText)
    study_description: Mapped[str] = mapped_column(IndexText)
    modalities_in_study: Mapped[str] = mapped_column(IndexText)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series (PS3.4 C.6.1.1.4 series level keys)."""

    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    study_fk: Mapped[int] = mapped_column(Key, ForeignKey("study.pk"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(BigInteger)
    series_description: Mapped[str] = mapped_column(IndexText)
    body_part_examined: Mapped[str] = mapped_column(IndexText)
    series_date: Mapped[str] = mapped_column(String(16))
    series_time: Mapped[str] = mapped_column(String(32))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A stored composite instance and the file that holds it."""

    __tablename__ = "instance"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    series_fk: Mapped[int] = mapped_column(Key, ForeignKey("series.pk"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(String(512))
    file_size: Mapped[int] = mapped_column(BigInteger)
    file_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    header: Mapped[dict[str, Any]] = mapped_column(JsonDocument)

    series: Mapped[Series] = relationship(back_populates="instances")


class WorklistItem(Base):
    """A Modality Worklist item (PS3.4 K.6.1): one Scheduled Procedure Step to perform.

    The columns are what modalities match on; `document` is the whole item in the DICOM JSON
    model, with exactly one item in its Scheduled Procedure Step Sequence, as a worklist
    response carries it (PS3.4 K.6.1.2.2).
    """

    __tablename__ = "worklist_item"
    __table_args__ = (
        Index(
            "uq_worklist_item_step",
            "accession_number",
            "requested_procedure_id",
            "scheduled_procedure_step_id",
            unique=True,
        ),
    )

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    patient_id: Mapped[str] = mapped_column(IndexText, index=True)
    patient_name: Mapped[str] = mapped_column(IndexText)
    accession_number: Mapped[str] = mapped_column(IndexText)
    requested_procedure_id: Mapped[str] = mapped_column(IndexText)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    scheduled_procedure_step_id: Mapped[str] = mapped_column(IndexText)
    scheduled_station_ae_title: Mapped[str] = mapped_column(String(16), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    start_date: Mapped[str] = mapped_column(String(16), index=True)
    start_time: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step (PS3.4 F.7) as its modality reported it.

    `attributes` is the step's whole Attribute List in the DICOM JSON model, N-SETs applied;
    the columns are what an operator lists and filters on.
    """

    __tablename__ = "mpps"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    performed_station_ae_title: Mapped[str] = mapped_column(String(16))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(IndexText, index=True)
    patient_name: Mapped[str] = mapped_column(IndexText)
    accession_number: Mapped[str] = mapped_column(IndexText)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    start_date: Mapped[str] = mapped_column(String(16), index=True)
    start_time: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonDocument)

    series: Mapped[list[PerformedSeries]] = relationship(
        back_populates="step", cascade="all, delete-orphan"
    )


class PerformedSeries(Base):
    """A series a performed step says it produced, by UID: joined with `series` to show arrival."""

    __tablename__ = "mpps_series"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    mpps_fk: Mapped[int] = mapped_column(Key, ForeignKey("mpps.pk"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    referenced_instances: Mapped[int] = mapped_column(Integer)

    step: Mapped[PerformedProcedureStep] = relationship(back_populates="series")


class CommitmentRequest(Base):
    """A Storage Commitment request (PS3.4 J.3) until its N-EVENT-REPORT is delivered.

    `references` are the [SOP Class UID, SOP Instance UID] pairs asked for; `result` is what the
    check found ({"success": [...], "failed": [[class, instance, reason], ...]}), kept so that a
    retried or restarted delivery reports the same outcome.
    """

    __tablename__ = "commitment_request"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(UID, unique=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(256))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    references: Mapped[list[Any]] = mapped_column(JsonDocument)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    # Cluster mode (index/cluster.py): the node delivering it, until when (renewed by its
    # heartbeat); NULL when no node holds it. Unused by a single node.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UpsWorkitem(Base):
    """A Unified Procedure Step (PS3.4 Annex CC), the workitem of a UPS worklist.

    `attributes` is the workitem in the DICOM JSON model (N-SETs applied, Transaction UID left
    out: it is never returned, CC.2.7.3); the columns are what C-FIND narrows on and what an
    operator lists. `transaction_uid` locks an IN PROGRESS workitem to its performer.
    """

    __tablename__ = "ups_workitem"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    transaction_uid: Mapped[str] = mapped_column(UID)
    performer_ae_title: Mapped[str] = mapped_column(String(16))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    input_readiness_state: Mapped[str] = mapped_column(String(16))
    procedure_step_label: Mapped[str] = mapped_column(IndexText)
    worklist_label: Mapped[str] = mapped_column(IndexText, index=True)
    patient_id: Mapped[str] = mapped_column(IndexText, index=True)
    patient_name: Mapped[str] = mapped_column(IndexText)
    start_datetime: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attributes: Mapped[dict[str, Any]] = mapped_column(JsonDocument)

    subscriptions: Mapped[list[UpsSubscription]] = relationship(
        back_populates="workitem", cascade="all, delete-orphan"
    )


class UpsSubscription(Base):
    """An AE subscribed to one workitem's event reports, with or without a deletion lock."""

    __tablename__ = "ups_subscription"
    __table_args__ = (
        Index("uq_ups_subscription_workitem", "workitem_fk", "ae_title", unique=True),
    )

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    workitem_fk: Mapped[int] = mapped_column(Key, ForeignKey("ups_workitem.pk"))
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    deletion_lock: Mapped[bool] = mapped_column(Boolean)

    workitem: Mapped[UpsWorkitem] = relationship(back_populates="subscriptions")


class UpsGlobalSubscription(Base):
    """An AE's Global Subscription State (PS3.4 CC.2.3): with or without a deletion lock, and
    the Matching Keys (DICOM JSON) of a Filtered Global Subscription."""

    __tablename__ = "ups_global_subscription"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    deletion_lock: Mapped[bool] = mapped_column(Boolean)
    match_keys: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)


class UpsEventReport(Base):
    """A UPS Event N-EVENT-REPORT (PS3.4 CC.2.4) waiting for delivery to one AE.

    Reports to one AE go out in `pk` order; a failed delivery reschedules all of that AE's
    reports. `information` is the Event Information in the DICOM JSON model.
    """

    __tablename__ = "ups_event_report"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    event_type: Mapped[int] = mapped_column(Integer)
    information: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(256))
    # As CommitmentRequest's: in cluster mode one node at a time delivers an AE's reports.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ClusterNode(Base):
    """A pacsd node of a cluster (index/cluster.py): its leading process registers it and
    updates `last_seen` every `heartbeat` seconds; silent for 3 heartbeats, it is dead."""

    __tablename__ = "cluster_node"

    pk: Mapped[int] = mapped_column(Key, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    http_url: Mapped[str] = mapped_column(String(256))  # "" when it serves no HTTP
    dicom_address: Mapped[str] = mapped_column(String(256))  # host:port of its listener
    # Its open associations, every worker's, as of `last_seen` (0 once stopped); NULL when
    # it keeps no metrics to count them (no HTTP interface) or not yet.
    associations: Mapped[int | None] = mapped_column(Integer)
