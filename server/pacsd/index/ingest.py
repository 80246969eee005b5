"""Record a stored instance in the index: patient, study, series and instance in one transaction.

Concurrent associations may create the same patient, study or series at the same moment; every
insert is `INSERT ... ON CONFLICT DO NOTHING` followed by a lookup, so the unique constraints
decide and nobody fails. The first instance of a study or series sets its attributes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import InstrumentedAttribute

from pacsd.dicom.header import InstanceAttributes
from pacsd.index.models import Base, Instance, Patient, Series, Study


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one stored instance."""

    attributes: InstanceAttributes
    transfer_syntax_uid: str
    file_path: str
    file_size: int
    file_sha256: str
    received_at: datetime
    calling_ae_title: str
    header: dict[str, Any]


class IngestOutcome(enum.Enum):
    """What recording an instance did."""

    CREATED = "created"
    ALREADY_PRESENT = "already-present"
    REPLACED = "replaced"


@dataclass(frozen=True)
class IngestResult:
    """The outcome, and the file the index no longer points to (after a replacement)."""

    outcome: IngestOutcome
    superseded_file_path: str | None = None


def record_instance(connection: Connection, record: InstanceRecord, replace: bool) -> IngestResult:
    """Add the instance (creating its patient/study/series), or replace it when `replace`."""
    series_pk = _series_pk(connection, record.attributes)
    values = _instance_values(record, series_pk)
    for _attempt in range(2):
        if replace:
            superseded = _replace_instance(connection, values)
            if superseded == record.file_path:
                return IngestResult(IngestOutcome.CREATED)  # our own row, committed in doubt
            if superseded is not None:
                return IngestResult(IngestOutcome.REPLACED, superseded)
        created = _insert_ignoring_conflict(
            connection, Instance, values, [Instance.sop_instance_uid]
        )
        if created is not None:
            return IngestResult(IngestOutcome.CREATED)
        if not replace:
            return _present(connection, record)
    raise RuntimeError("instance row neither insertable nor replaceable")  # pragma: no cover


def _present(connection: Connection, record: InstanceRecord) -> IngestResult:
    """The row exists: another store's, or this record's own from a retried transaction whose
    COMMIT failed but took effect (file paths are unique per write: storage/filesystem.py)."""
    file_path = connection.execute(
        select(Instance.file_path).where(
            Instance.sop_instance_uid == record.attributes.sop_instance_uid
        )
    ).scalar_one_or_none()
    if file_path == record.file_path:
        return IngestResult(IngestOutcome.CREATED)
    return IngestResult(IngestOutcome.ALREADY_PRESENT)


def _instance_values(record: InstanceRecord, series_pk: int) -> dict[str, Any]:
    attributes = record.attributes
    return {
        "series_fk": series_pk,
        "sop_instance_uid": attributes.sop_instance_uid,
        "sop_class_uid": attributes.sop_class_uid,
        "instance_number": attributes.instance_number,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "file_path": record.file_path,
        "file_size": record.file_size,
        "file_sha256": record.file_sha256,
        "received_at": record.received_at,
        "calling_ae_title": record.calling_ae_title,
        "header": record.header,
    }


def _replace_instance(connection: Connection, values: dict[str, Any]) -> str | None:
    """Point an existing row at the new file; return the old file path (None: no row)."""
    row = connection.execute(
        select(Instance.pk, Instance.file_path)
        .where(Instance.sop_instance_uid == values["sop_instance_uid"])
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    connection.execute(update(Instance).where(Instance.pk == row.pk).values(**values))
    return str(row.file_path)


def _insert_ignoring_conflict(
    connection: Connection,
    model: type[Base],
    values: dict[str, Any],
    conflict_columns: list[InstrumentedAttribute[Any]],
    conflict_where: TextClause | None = None,
) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING pk: the new key, or None on conflict."""
    insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
    statement = (
        insert(model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_columns, index_where=conflict_where)
        .returning(model.__table__.c.pk)
    )
    return connection.execute(statement).scalar_one_or_none()


def _patient_pk(connection: Connection, attributes: InstanceAttributes) -> int:
    values = {
        "patient_id": attributes.patient_id,
        "issuer_of_patient_id": attributes.issuer_of_patient_id,
        "patient_name": attributes.patient_name,
        "patient_birth_date": attributes.patient_birth_date,
        "patient_sex": attributes.patient_sex,
    }
    if not attributes.patient_id:  # nobody to match: a patient row of its own
        return connection.execute(
            insert(Patient).values(**values).returning(Patient.pk)
        ).scalar_one()
    created = _insert_ignoring_conflict(
        connection,
        Patient,
        values,
        [Patient.patient_id, Patient.issuer_of_patient_id],
        text("patient_id <> ''"),
    )
    if created is not None:
        return created
    return connection.execute(
        select(Patient.pk).where(
            Patient.patient_id == attributes.patient_id,
            Patient.issuer_of_patient_id == attributes.issuer_of_patient_id,
        )
    ).scalar_one()


def _study_pk(connection: Connection, attributes: InstanceAttributes) -> int:
    uid = attributes.study_instance_uid
    existing = connection.scalar(select(Study.pk).where(Study.study_instance_uid == uid))
    if existing is not None:
        return existing
    values = {
        "patient_fk": _patient_pk(connection, attributes),
        "study_instance_uid": uid,
        "study_date": attributes.study_date,
        "study_time": attributes.study_time,
        "accession_number": attributes.accession_number,
        "study_id": attributes.study_id,
        "referring_physician_name": attributes.referring_physician_name,
        "study_description": attributes.study_description,
        "modalities_in_study": "",
    }
    created = _insert_ignoring_conflict(connection, Study, values, [Study.study_instance_uid])
    if created is not None:
        return created
    return connection.execute(select(Study.pk).where(Study.study_instance_uid == uid)).scalar_one()


def _series_pk(connection: Connection, attributes: InstanceAttributes) -> int:
    uid = attributes.series_instance_uid
    existing = connection.scalar(select(Series.pk).where(Series.series_instance_uid == uid))
    if existing is not None:
        return existing
    study_pk = _study_pk(connection, attributes)
    # Lock the study so that concurrent new series of one study update its modalities in turn.
    connection.execute(select(Study.pk).where(Study.pk == study_pk).with_for_update())
    values = {
        "study_fk": study_pk,
        "series_instance_uid": uid,
        "modality": attributes.modality,
        "series_number": attributes.series_number,
        "series_description": attributes.series_description,
        "body_part_examined": attributes.body_part_examined,
        "series_date": attributes.series_date,
        "series_time": attributes.series_time,
    }
    created = _insert_ignoring_conflict(connection, Series, values, [Series.series_instance_uid])
    if created is None:
        return connection.execute(
            select(Series.pk).where(Series.series_instance_uid == uid)
        ).scalar_one()
    refresh_modalities_in_study(connection, study_pk)
    return created


def refresh_modalities_in_study(connection: Connection, study_pk: int) -> None:
    """ModalitiesInStudy (0008,0061): the distinct modalities of the study's series."""
    modalities = connection.scalars(
        select(Series.modality).where(Series.study_fk == study_pk, Series.modality != "").distinct()
    ).all()
    connection.execute(
        update(Study)
        .where(Study.pk == study_pk)
        .values(modalities_in_study="\\".join(sorted(modalities))[:256])
    )
