"""Performed procedure steps in the index: created, updated under a row lock, read, listed.

The step's Attribute List is kept whole (DICOM JSON); the series it reports are kept by UID so
that a listing can tell, for each step, how many of its series and instances have arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacsd.dicom.header import header_json, index_text
from pacsd.errors import DuplicateRejected, NoSuchObjectInstance
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, PerformedProcedureStep, PerformedSeries, Series


def create_step(
    database: IndexDatabase, uid: str, attributes: Dataset, calling_ae_title: str
) -> None:
    """Store a new step; DuplicateRejected (0x0111) when its SOP Instance UID is taken."""
    now = datetime.now(UTC)
    step = PerformedProcedureStep(sop_instance_uid=uid, calling_ae_title=calling_ae_title)
    step.created_at = now
    _fill(step, attributes, now)
    try:
        with database.writing() as session:
            session.add(step)
    except IntegrityError:
        raise DuplicateRejected(f"a performed procedure step {uid} exists already") from None


Change = Callable[[str, Dataset], tuple[str, Dataset]]


def update_step(database: IndexDatabase, uid: str, change: Change) -> Dataset:
    """Apply `change(status, attributes) -> (status, attributes)` atomically; the new attributes.

    The row is locked for the change (SELECT ... FOR UPDATE; SQLite serializes writers), so two
    N-SETs of one step cannot both see it IN PROGRESS.
    """
    with database.writing() as session:
        step = session.scalars(
            select(PerformedProcedureStep)
            .where(PerformedProcedureStep.sop_instance_uid == uid)
            .with_for_update()
        ).one_or_none()
        if step is None:
            raise NoSuchObjectInstance(f"no performed procedure step {uid}")
        status, attributes = change(step.status, Dataset.from_json(step.attributes))
        _fill(step, attributes, datetime.now(UTC))
        step.status = status
        return attributes


def read_step(database: IndexDatabase, uid: str) -> Dataset:
    """The step's attributes; NoSuchObjectInstance (0x0112) when there is none."""
    with database.reading() as session:
        document = session.scalar(
            select(PerformedProcedureStep.attributes).where(
                PerformedProcedureStep.sop_instance_uid == uid
            )
        )
    if document is None:
        raise NoSuchObjectInstance(f"no performed procedure step {uid}")
    return Dataset.from_json(document)


def _fill(step: PerformedProcedureStep, attributes: Dataset, now: datetime) -> None:
    scheduled = list(attributes.get("ScheduledStepAttributesSequence") or [Dataset()])
    step.status = index_text(attributes, "PerformedProcedureStepStatus")
    step.performed_station_ae_title = index_text(attributes, "PerformedStationAETitle")[:16]
    step.modality = index_text(attributes, "Modality")[:16]
    step.patient_id = index_text(attributes, "PatientID")
    step.patient_name = index_text(attributes, "PatientName")
    step.accession_number = index_text(scheduled[0], "AccessionNumber")
    step.study_instance_uid = index_text(scheduled[0], "StudyInstanceUID")[:64]
    step.start_date = index_text(attributes, "PerformedProcedureStepStartDate")[:16]
    step.start_time = index_text(attributes, "PerformedProcedureStepStartTime")[:32]
    step.updated_at = now
    step.attributes = header_json(attributes)
    step.series = [
        PerformedSeries(
            series_instance_uid=index_text(item, "SeriesInstanceUID")[:64],
            referenced_instances=len(item.get("ReferencedImageSequence") or [])
            + len(item.get("ReferencedNonImageCompositeSOPInstanceSequence") or []),
        )
        for item in attributes.get("PerformedSeriesSequence") or []
        if index_text(item, "SeriesInstanceUID")
    ]


@dataclass(frozen=True)
class StepSummary:
    """A step as an operator lists it, with what of its images the archive holds."""

    sop_instance_uid: str
    status: str
    station: str
    modality: str
    patient_id: str
    patient_name: str
    accession_number: str
    start: str
    series_reported: int
    series_arrived: int
    instances_reported: int
    instances_stored: int


def list_steps(database: IndexDatabase) -> list[StepSummary]:
    """Every step, newest start first, with the arrival of its reported series."""
    order = (PerformedProcedureStep.start_date.desc(), PerformedProcedureStep.start_time.desc())
    with database.reading() as session:
        steps = list(session.scalars(select(PerformedProcedureStep).order_by(*order)))
        return [_summary(session, step) for step in steps]


def _summary(session: Session, step: PerformedProcedureStep) -> StepSummary:
    uids = [series.series_instance_uid for series in step.series]
    arrived = session.execute(
        select(Series.series_instance_uid, func.count(Instance.pk))
        .join(Instance, Instance.series_fk == Series.pk)
        .where(Series.series_instance_uid.in_(uids))
        .group_by(Series.series_instance_uid)
    ).all()
    return StepSummary(
        sop_instance_uid=step.sop_instance_uid,
        status=step.status,
        station=step.performed_station_ae_title,
        modality=step.modality,
        patient_id=step.patient_id,
        patient_name=step.patient_name,
        accession_number=step.accession_number,
        start=f"{step.start_date} {step.start_time}".strip(),
        series_reported=len(uids),
        series_arrived=len(arrived),
        instances_reported=sum(series.referenced_instances for series in step.series),
        instances_stored=sum(int(count) for _uid, count in arrived),
    )
