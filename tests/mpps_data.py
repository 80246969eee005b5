"""Modality Performed Procedure Step data sets as a modality sends them (PS3.4 Table F.7.2-1).

`n_create` is a complete N-CREATE Attribute List (every Type 1 valued, every Type 2 present);
`final_set` the N-SET that completes or discontinues a step, reporting `performed_series`.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsd.dicom.mpps import IN_PROGRESS

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
IMAGE_UID = "1.2.826.0.1.3680043.8.498.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def scheduled_step(study_uid: str = STUDY_UID) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedStudySequence = Sequence()
    item.AccessionNumber = "ACC1"
    item.RequestedProcedureID = "RP1"
    item.RequestedProcedureDescription = "CT chest"
    item.ScheduledProcedureStepID = "SPS1"
    item.ScheduledProcedureStepDescription = "CT chest w/o contrast"
    item.ScheduledProtocolCodeSequence = Sequence()
    return item


def n_create(study_uid: str = STUDY_UID) -> Dataset:
    """A complete N-CREATE Attribute List: every Type 1 valued, every Type 2 present."""
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled_step(study_uid)])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID1"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT_1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240101"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepStatus = IN_PROGRESS
    ds.PerformedProcedureStepDescription = "CT chest"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def performed_series(
    series_uid: str = SERIES_UID, image_uids: tuple[str, ...] = (IMAGE_UID,)
) -> Dataset:
    images = []
    for uid in image_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        image.ReferencedSOPInstanceUID = uid
        images.append(image)
    series = Dataset()
    series.PerformingPhysicianName = ""
    series.ProtocolName = "Chest"
    series.OperatorsName = ""
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = Sequence(images)
    series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    return series


def final_set(status: str, series: Dataset | None = None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240101"
    ds.PerformedProcedureStepEndTime = "101500"
    ds.PerformedSeriesSequence = Sequence([series or performed_series()])
    return ds
