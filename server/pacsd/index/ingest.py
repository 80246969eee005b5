"""Record a stored instance in the index: patient, study, series and instance in one transaction.

Concurrent associations may create the same patient, study or series at the same moment; every
insert is `INSERT ... ON CONFLICT DO NOTHING` followed by a lookup, so the unique constraints
decide and nobody fails. The first instance of a study or series sets its attributes.

The statements are built once and run with bound parameters: building them per C-STORE
(`insert().values()`, `select().where()`) cost SQLAlchemy more than running them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

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
        created = _insert_ignoring_conflict(connection, Instance, values)
        if created is not None:
            return IngestResult(IngestOutcome.CREATED)
        if not replace:
            return _present(connection, record)
    raise RuntimeError("instance row neither insertable nor replaceable")  # pragma: no cover


def _present(connection: Connection, record: InstanceRecord) -> IngestResult:
    """The row exists: another store's, or this record's own from a retried transaction whose
    COMMIT failed but took effect (file paths are unique per write: storage/filesystem.py)."""
    file_path = connection.scalar(_INSTANCE_FILE, {"uid": record.attributes.sop_instance_uid})
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
        _INSTANCE_FOR_UPDATE, {"uid": values["sop_instance_uid"]}
    ).one_or_none()
    if row is None:
        return None
    connection.execute(update(Instance).where(Instance.pk == row.pk).values(**values))
    return str(row.file_path)


def _insert_ignoring_conflict(
    connection: Connection, model: type[Base], values: dict[str, Any]
) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING pk: the new key, or None on conflict."""
    statement = _insert_statement(connection.dialect.name, model)
    return connection.execute(statement, values).scalar_one_or_none()


# The unique index each insert may conflict on (index_where: the partial index's predicate).
_CONFLICT_TARGETS: dict[type[Base], tuple[list[str], str | None]] = {
    Patient: (["patient_id", "issuer_of_patient_id"], "patient_id <> ''"),
    Study: (["study_instance_uid"], None),
    Series: (["series_instance_uid"], None),
    Instance: (["sop_instance_uid"], None),
}


@cache
def _insert_statement(dialect: str, model: type[Base]) -> Executable:
    insert_for = sqlite_insert if dialect == "sqlite" else postgresql_insert
    columns, where = _CONFLICT_TARGETS[model]
    table = model.__table__
    return (
        insert_for(model)
        .on_conflict_do_nothing(
            index_elements=[table.c[name] for name in columns],
            index_where=text(where) if where is not None else None,
        )
        .returning(table.c.pk)
    )


_INSTANCE_FILE = select(Instance.file_path).where(Instance.sop_instance_uid == bindparam("uid"))
_INSTANCE_FOR_UPDATE = (
    select(Instance.pk, Instance.file_path)
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_PATIENT_PK = select(Patient.pk).where(
    Patient.patient_id == bindparam("patient_id"),
    Patient.issuer_of_patient_id == bindparam("issuer"),
)
_STUDY_PK = select(Study.pk).where(Study.study_instance_uid == bindparam("uid"))
_SERIES_PK = select(Series.pk).where(Series.series_instance_uid == bindparam("uid"))
_LOCK_STUDY = select(Study.pk).where(Study.pk == bindparam("pk")).with_for_update()


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
    created = _insert_ignoring_conflict(connection, Patient, values)
    if created is not None:
        return created
    key = {"patient_id": attributes.patient_id, "issuer": attributes.issuer_of_patient_id}
    return connection.execute(_PATIENT_PK, key).scalar_one()


def _study_pk(connection: Connection, attributes: InstanceAttributes) -> int:
    uid = attributes.study_instance_uid
    existing = connection.scalar(_STUDY_PK, {"uid": uid})
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
    created = _insert_ignoring_conflict(connection, Study, values)
    if created is not None:
        return created
    return connection.execute(_STUDY_PK, {"uid": uid}).scalar_one()


def _series_pk(connection: Connection, attributes: InstanceAttributes) -> int:
    uid = attributes.series_instance_uid
    existing = connection.scalar(_SERIES_PK, {"uid": uid})
    if existing is not None:
        return existing
    study_pk = _study_pk(connection, attributes)
    # Lock the study so that concurrent new series of one study update its modalities in turn.
    connection.execute(_LOCK_STUDY, {"pk": study_pk})
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
    created = _insert_ignoring_conflict(connection, Series, values)
    if created is None:
        return connection.execute(_SERIES_PK, {"uid": uid}).scalar_one()
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
