"""MPPS N-CREATE / N-SET rules (PS3.4 F.7, Table F.7.2-1) checked on real pydicom data sets."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacsd.dicom.mpps import (
    COMPLETED,
    DISCONTINUED,
    IN_PROGRESS,
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
    MppsRefused,
    NoSuchAttribute,
    StepNoLongerUpdatable,
    apply_set,
    check_create,
    check_set,
)
from pacsd.errors import DicomStatusError
from tests.mpps_data import final_set, n_create, performed_series, scheduled_step

STUDY_INSTANCE_UID = 0x0020000D
STATUS = 0x00400252
END_DATE = 0x00400250
END_TIME = 0x00400251
PERFORMED_SERIES = 0x00400340

TYPE_1_ON_CREATE = {
    "PerformedProcedureStepStatus": 0x00400252,
    "PerformedStationAETitle": 0x00400241,
    "PerformedProcedureStepStartDate": 0x00400244,
    "PerformedProcedureStepStartTime": 0x00400245,
    "PerformedProcedureStepID": 0x00400253,
    "Modality": 0x00080060,
    "ScheduledStepAttributesSequence": 0x00400270,
}
TYPE_2_ON_CREATE = {
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "PatientBirthDate": 0x00100030,
    "PatientSex": 0x00100040,
    "ReferencedPatientSequence": 0x00081120,
    "PerformedStationName": 0x00400242,
    "PerformedLocation": 0x00400243,
    "PerformedProcedureStepDescription": 0x00400254,
    "PerformedProcedureTypeDescription": 0x00400255,
    "ProcedureCodeSequence": 0x00081032,
    "PerformedProcedureStepEndDate": 0x00400250,
    "PerformedProcedureStepEndTime": 0x00400251,
    "StudyID": 0x00200010,
    "PerformedProtocolCodeSequence": 0x00400260,
    "PerformedSeriesSequence": 0x00400340,
}
NOT_ALLOWED_IN_N_SET = {
    "PerformedProcedureStepStartDate": ("20240102", 0x00400244),
    "PerformedProcedureStepStartTime": ("0800", 0x00400245),
    "PerformedStationAETitle": ("OTHER_AE", 0x00400241),
    "PerformedProcedureStepID": ("PPS9", 0x00400253),
    "Modality": ("MR", 0x00080060),
    "PatientID": ("OTHER", 0x00100020),
    "PatientName": ("Other^Name", 0x00100010),
    "StudyID": ("S9", 0x00200010),
    "SOPInstanceUID": ("1.2.3.9", 0x00080018),
}


def refusal(excinfo: pytest.ExceptionInfo[MppsRefused]) -> tuple[int, list[int]]:
    return excinfo.value.status, excinfo.value.tags


# --- N-CREATE ---------------------------------------------------------------------------------


def test_complete_n_create_is_accepted() -> None:
    check_create(n_create())


@pytest.mark.parametrize(("keyword", "tag"), TYPE_1_ON_CREATE.items())
def test_absent_type_1_attribute_on_create_is_missing_attribute(keyword: str, tag: int) -> None:
    ds = n_create()
    delattr(ds, keyword)
    with pytest.raises(MissingAttribute) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0120, [tag])
    assert keyword in excinfo.value.comment


@pytest.mark.parametrize(("keyword", "tag"), TYPE_2_ON_CREATE.items())
def test_absent_type_2_attribute_on_create_is_tolerated(keyword: str, tag: int) -> None:
    ds = n_create()
    delattr(ds, keyword)
    check_create(ds)  # a modality that leaves out an empty Type 2 attribute is not refused


@pytest.mark.parametrize(
    ("keyword", "tag"),
    [(k, t) for k, t in TYPE_1_ON_CREATE.items() if k != "ScheduledStepAttributesSequence"],
)
def test_empty_type_1_attribute_on_create_is_missing_value(keyword: str, tag: int) -> None:
    ds = n_create()
    setattr(ds, keyword, "")
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0121, [tag])


def test_scheduled_step_sequence_without_items_is_missing_value() -> None:
    ds = n_create()
    ds.ScheduledStepAttributesSequence = Sequence()
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0121, [0x00400270])


def test_scheduled_step_item_without_study_instance_uid_is_missing_attribute() -> None:
    ds = n_create()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    with pytest.raises(MissingAttribute) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0120, [STUDY_INSTANCE_UID])


def test_every_missing_attribute_is_listed_and_the_comment_fits_lo() -> None:
    ds = n_create()
    for keyword in ("PerformedStationAETitle", "Modality", "PerformedProcedureStepID"):
        delattr(ds, keyword)
    with pytest.raises(MissingAttribute) as excinfo:
        check_create(ds)
    assert sorted(excinfo.value.tags) == [0x00080060, 0x00400241, 0x00400253]
    assert len(excinfo.value.comment) <= 64
    assert isinstance(excinfo.value, DicomStatusError)


def test_whitespace_only_type_1_value_is_missing_value() -> None:
    ds = n_create()
    ds.PerformedProcedureStepID = "  "
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0121, [0x00400253])


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("status", [COMPLETED, DISCONTINUED, "in progress", "STARTED"])
def test_create_not_in_progress_is_invalid_attribute_value(status: str) -> None:
    ds = n_create()
    ds.PerformedProcedureStepStatus = status
    with pytest.raises(InvalidAttributeValue) as excinfo:
        check_create(ds)
    assert refusal(excinfo) == (0x0106, [STATUS])


# --- N-SET ------------------------------------------------------------------------------------


def test_n_set_in_progress_keeps_the_status() -> None:
    ds = Dataset()
    ds.PerformedProcedureStepDescription = "CT chest and abdomen"
    ds.PerformedSeriesSequence = Sequence([performed_series()])
    assert check_set(IN_PROGRESS, ds) == IN_PROGRESS


@pytest.mark.parametrize("status", [COMPLETED, DISCONTINUED])
def test_final_n_set_with_final_state_attributes_returns_new_status(status: str) -> None:
    assert check_set(IN_PROGRESS, final_set(status)) == status


@pytest.mark.parametrize("status", [COMPLETED, DISCONTINUED])
@pytest.mark.parametrize(
    ("keyword", "tag"),
    [
        ("PerformedProcedureStepEndDate", END_DATE),
        ("PerformedProcedureStepEndTime", END_TIME),
        ("PerformedSeriesSequence", PERFORMED_SERIES),
    ],
)
def test_final_n_set_without_final_state_attribute_is_refused(
    status: str, keyword: str, tag: int
) -> None:
    ds = final_set(status)
    delattr(ds, keyword)
    with pytest.raises(MissingAttribute) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0120, [tag])


def test_completing_with_empty_end_date_is_missing_value() -> None:
    ds = final_set(COMPLETED)
    ds.PerformedProcedureStepEndDate = ""
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0121, [END_DATE])


def test_completing_with_empty_performed_series_sequence_is_refused() -> None:
    """Table F.7.2-1 Note 2: a Series must exist for every completed step."""
    ds = final_set(COMPLETED)
    ds.PerformedSeriesSequence = Sequence()
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0121, [PERFORMED_SERIES])


def test_final_state_counts_attributes_set_by_an_earlier_n_set() -> None:
    stored = apply_set(n_create(), final_set(IN_PROGRESS))
    completing = Dataset()
    completing.PerformedProcedureStepStatus = COMPLETED
    assert check_set(IN_PROGRESS, completing, current=stored) == COMPLETED
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_set(IN_PROGRESS, completing, current=n_create())
    assert refusal(excinfo) == (0x0121, [END_DATE, END_TIME, PERFORMED_SERIES])


@pytest.mark.parametrize("stored_status", [COMPLETED, DISCONTINUED])
@pytest.mark.parametrize("status_in_request", [None, IN_PROGRESS, COMPLETED])
def test_any_n_set_after_final_status_is_processing_failure_a710(
    stored_status: str, status_in_request: str | None
) -> None:
    ds = Dataset()
    ds.CommentsOnThePerformedProcedureStep = "late comment"
    if status_in_request is not None:
        ds.PerformedProcedureStepStatus = status_in_request
    with pytest.raises(StepNoLongerUpdatable) as excinfo:
        check_set(stored_status, ds)
    assert excinfo.value.status == 0x0110
    assert excinfo.value.error_id == 0xA710
    assert excinfo.value.comment == "Performed Procedure Step Object may no longer be updated"


@pytest.mark.parametrize(("keyword", "value_and_tag"), NOT_ALLOWED_IN_N_SET.items())
def test_not_allowed_attribute_in_n_set_is_refused_with_its_tag(
    keyword: str, value_and_tag: tuple[str, int]
) -> None:
    value, tag = value_and_tag
    ds = Dataset()
    ds.PerformedProcedureStepDescription = "allowed"
    setattr(ds, keyword, value)
    with pytest.raises(NoSuchAttribute) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0105, [tag])


def test_scheduled_step_sequence_in_n_set_is_refused() -> None:
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled_step()])
    with pytest.raises(NoSuchAttribute) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0105, [0x00400270])


def test_unknown_status_in_n_set_is_invalid_attribute_value() -> None:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "CANCELLED"
    with pytest.raises(InvalidAttributeValue) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0106, [STATUS])


def test_empty_status_in_n_set_is_missing_value() -> None:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = ""
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0121, [STATUS])


def test_performed_series_item_without_series_instance_uid_is_refused() -> None:
    ds = Dataset()
    series = performed_series()
    del series.SeriesInstanceUID
    ds.PerformedSeriesSequence = Sequence([series])
    with pytest.raises(MissingAttribute) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0120, [0x0020000E])


def test_referenced_image_without_sop_instance_uid_is_missing_value() -> None:
    ds = Dataset()
    series = performed_series()
    series.ReferencedImageSequence[0].ReferencedSOPInstanceUID = ""
    ds.PerformedSeriesSequence = Sequence([series])
    with pytest.raises(MissingAttributeValue) as excinfo:
        check_set(IN_PROGRESS, ds)
    assert refusal(excinfo) == (0x0121, [0x00081155])


# --- apply_set --------------------------------------------------------------------------------


def test_apply_set_replaces_whole_attributes_and_leaves_the_stored_one_alone() -> None:
    stored = n_create()
    stored.PerformedSeriesSequence = Sequence([performed_series(), performed_series()])
    modification = final_set(COMPLETED)
    updated = apply_set(stored, modification)
    assert updated.PerformedProcedureStepStatus == COMPLETED
    assert updated.PerformedProcedureStepEndTime == "101500"
    assert len(updated.PerformedSeriesSequence) == 1
    assert updated.PatientID == "PID1"
    assert stored.PerformedProcedureStepStatus == IN_PROGRESS
    assert len(stored.PerformedSeriesSequence) == 2


def test_apply_set_with_empty_value_clears_but_keeps_the_attribute() -> None:
    stored = n_create()
    modification = Dataset()
    modification.PerformedProcedureStepDescription = ""
    modification.CommentsOnThePerformedProcedureStep = "contrast refused"
    updated = apply_set(stored, modification)
    assert "PerformedProcedureStepDescription" in updated
    assert updated.PerformedProcedureStepDescription == ""
    assert updated.CommentsOnThePerformedProcedureStep == "contrast refused"
    assert stored.PerformedProcedureStepDescription == "CT chest"


def _round_trip(ds: Dataset) -> Dataset:
    """Encode as a peer would send it and read it back undecoded."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return read_dataset(BytesIO(buffer.getvalue()), is_implicit_VR=False, is_little_endian=True)


def test_apply_set_combines_character_sets_of_create_and_set() -> None:
    """F.7.2.2.3: the N-SET Specific Character Set adds to the stored one, it does not replace."""
    stored = n_create()
    stored.SpecificCharacterSet = "ISO_IR 100"
    stored.PerformedProcedureStepDescription = "Thorax Übersicht"
    modification = Dataset()
    modification.SpecificCharacterSet = "ISO_IR 192"
    modification.CommentsOnThePerformedProcedureStep = "造影剤なし"
    updated = apply_set(_round_trip(stored), _round_trip(modification))
    assert updated.SpecificCharacterSet == "ISO_IR 192"
    reread = _round_trip(updated)
    assert reread.PerformedProcedureStepDescription == "Thorax Übersicht"
    assert reread.CommentsOnThePerformedProcedureStep == "造影剤なし"
