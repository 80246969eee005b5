"""Worklist items in the index: add, list, remove, and find them for a worklist C-FIND.

`find` narrows in SQL on the columns modalities match on (station, modality, start date,
patient, accession, step and procedure IDs) and checks every key exactly on the stored item
(the same matchers as C-FIND), in keyset batches, so a query never loads the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydicom.tag import Tag
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute

from pacsd.dicom.matching import JsonRecord, Key, Record, SequenceMatcher, ZonedRecord
from pacsd.dicom.worklist_item import WorklistEntry, WorklistItemError
from pacsd.index.database import IndexDatabase
from pacsd.index.models import WorklistItem
from pacsd.index.query import ZONE_MARGIN_DAYS, column_condition

SCHEDULED_STEPS = int(Tag("ScheduledProcedureStepSequence"))
_COLUMNS: Mapping[int, InstrumentedAttribute[Any]] = {
    int(Tag("PatientID")): WorklistItem.patient_id,
    int(Tag("PatientName")): WorklistItem.patient_name,
    int(Tag("AccessionNumber")): WorklistItem.accession_number,
    int(Tag("RequestedProcedureID")): WorklistItem.requested_procedure_id,
    int(Tag("StudyInstanceUID")): WorklistItem.study_instance_uid,
}
_STEP_COLUMNS: Mapping[int, InstrumentedAttribute[Any]] = {
    int(Tag("ScheduledStationAETitle")): WorklistItem.scheduled_station_ae_title,
    int(Tag("Modality")): WorklistItem.modality,
    int(Tag("ScheduledProcedureStepID")): WorklistItem.scheduled_procedure_step_id,
    int(Tag("ScheduledProcedureStepStartDate")): WorklistItem.start_date,
}


def add_entries(database: IndexDatabase, entries: Sequence[WorklistEntry]) -> list[int]:
    """Insert `entries` in one transaction; their ids. A step already scheduled is refused."""
    now = datetime.now(UTC)
    try:
        with database.writing() as session:
            rows = [_row(entry, now) for entry in entries]
            session.add_all(rows)
            session.flush()
            return [row.pk for row in rows]
    except IntegrityError:
        raise WorklistItemError(
            "a step with the same Accession Number, Requested Procedure ID and Scheduled "
            "Procedure Step ID is already in the worklist (see `pacsd worklist list`)"
        ) from None


def _row(entry: WorklistEntry, added_at: datetime) -> WorklistItem:
    return WorklistItem(
        patient_id=entry.patient_id,
        patient_name=entry.patient_name,
        accession_number=entry.accession_number,
        requested_procedure_id=entry.requested_procedure_id,
        study_instance_uid=entry.study_instance_uid,
        scheduled_procedure_step_id=entry.scheduled_procedure_step_id,
        scheduled_station_ae_title=entry.scheduled_station_ae_title,
        modality=entry.modality,
        start_date=entry.start_date,
        start_time=entry.start_time,
        added_at=added_at,
        document=entry.document,
    )


def list_items(database: IndexDatabase) -> list[WorklistItem]:
    """Every item, by scheduled start."""
    order = (WorklistItem.start_date, WorklistItem.start_time, WorklistItem.pk)
    with database.reading() as session:
        return list(session.scalars(select(WorklistItem).order_by(*order)))


def remove_items(database: IndexDatabase, pks: Sequence[int]) -> list[int]:
    """Delete the items with these ids; the ids that existed."""
    with database.writing() as session:
        statement = delete(WorklistItem).where(WorklistItem.pk.in_(pks))
        return list(session.scalars(statement.returning(WorklistItem.pk)))


def retire_steps(database: IndexDatabase, steps: Sequence[tuple[str, str, str]]) -> int:
    """Delete the items of these (Accession Number, Requested Procedure ID, Scheduled
    Procedure Step ID) steps; how many there were."""
    removed = 0
    with database.writing() as session:
        for accession, procedure, step in steps:
            statement = delete(WorklistItem).where(
                WorklistItem.accession_number == accession,
                WorklistItem.requested_procedure_id == procedure,
                WorklistItem.scheduled_procedure_step_id == step,
            )
            removed += len(list(session.scalars(statement.returning(WorklistItem.pk))))
    return removed


def find_items(
    database: IndexDatabase,
    keys: Sequence[Key],
    batch_size: int = 200,
    zone: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The stored items (DICOM JSON) that match every key, in id order; with `zone` (minutes
    east of UTC), their dates and times are matched in that timezone (PS3.4 C.2.2.2.1.3)."""
    matched = [key for key in keys if key.matcher is not None]
    widen = ZONE_MARGIN_DAYS if zone is not None else 0
    conditions = [clause for key in matched for clause in _conditions(key, widen)]
    statement = select(WorklistItem.pk, WorklistItem.document).where(*conditions)
    after = 0
    while True:
        with database.reading() as session:
            rows = list(
                session.execute(
                    statement.where(WorklistItem.pk > after)
                    .order_by(WorklistItem.pk)
                    .limit(batch_size)
                )
            )
        for _pk, document in rows:
            stored = JsonRecord(document)
            record: Record = stored if zone is None else ZonedRecord.of(stored, zone)
            if all(key.matcher is not None and key.matcher.matches(record) for key in matched):
                yield document
        if len(rows) < batch_size:
            return
        after = rows[-1][0]


def _conditions(key: Key, widen_days: int = 0) -> list[ColumnElement[bool]]:
    """SQL conditions implied by `key` (a superset of its matches; exact check follows)."""
    if key.tag in _COLUMNS:
        clause = column_condition(_COLUMNS[key.tag], key, widen_days)
        return [clause] if clause is not None else []
    if key.tag != SCHEDULED_STEPS or not isinstance(key.matcher, SequenceMatcher):
        return []
    found = []
    for item_key in key.item_keys:
        column = _STEP_COLUMNS.get(item_key.tag)
        if column is not None and item_key.matcher is not None:
            clause = column_condition(column, item_key, widen_days)
            if clause is not None:
                found.append(clause)
    return found
