"""UPS rules (PS3.4 Annex CC) on real pydicom data sets: N-CREATE (Table CC.2.5-3), N-SET
(CC.2.6.3), Change UPS State cell by cell (Table CC.1.1-2), Request UPS Cancel (CC.2.2.3), the
final state (Table CC.2.5-1), subscription requests (Table CC.2.3-1) and event information
(Table CC.2.4-1)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsd.dicom import ups
from pacsd.dicom.ups import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    UPS_PUSH,
    Workitem,
    apply_n_set,
    change_state,
    prepare_create,
    request_cancel,
    subscription_request,
)

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
UID = "1.2.826.0.1.3680043.10.1307.1"
TRANSACTION = "1.2.826.0.1.3680043.10.1307.99"
OTHER_TRANSACTION = "1.2.826.0.1.3680043.10.1307.98"


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99PACSD", meaning
    return item


def n_create(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = SCHEDULED
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "CAD"
    ds.ScheduledProcedureStepStartDateTime = "20261207090000"
    ds.InputReadinessState = "READY"
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-1"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def workitem(state: str = SCHEDULED, transaction: str = "") -> Workitem:
    stored, _status = prepare_create(n_create(), UID, NOW, "PACSD")
    stored.ProcedureStepState = state
    return Workitem(UID, state, transaction, "PERFORMER" if transaction else "", stored)


def action(state: str, transaction: str | None = TRANSACTION) -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = state
    if transaction is not None:
        ds.TransactionUID = transaction
    return ds


def performed() -> Dataset:
    """An N-SET meeting the COMPLETED final state (the P codes of Table CC.2.5-3)."""
    item = Dataset()
    item.PerformedStationNameCodeSequence = Sequence([code("WS1", "Workstation 1")])
    item.PerformedProcedureStepStartDateTime = "20261207100000"
    item.PerformedProcedureStepEndDateTime = "20261207101500"
    item.PerformedWorkitemCodeSequence = Sequence([code("CAD", "Computer aided detection")])
    item.OutputInformationSequence = Sequence()
    ds = Dataset()
    ds.TransactionUID = TRANSACTION
    ds.UnifiedProcedureStepPerformedProcedureSequence = Sequence([item])
    return ds


def test_n_create_keeps_the_workitem_and_fills_what_the_scp_maintains() -> None:
    stored, status = prepare_create(n_create(), UID, NOW, "PACSD")
    assert status == 0x0000
    assert (stored.SOPClassUID, stored.SOPInstanceUID) == (UPS_PUSH, UID)
    assert stored.WorklistLabel == "PACSD"  # 2/1: the SCP gives it a value
    assert stored.ScheduledProcedureStepModificationDateTime.startswith("20261207100000")
    assert stored.UnifiedProcedureStepPerformedProcedureSequence == []  # 2/2, created empty
    assert stored.ScheduledWorkitemCodeSequence == []
    assert "TransactionUID" not in stored


@pytest.mark.parametrize(
    "keyword",
    [
        "ScheduledProcedureStepPriority",
        "ProcedureStepLabel",
        "ScheduledProcedureStepStartDateTime",
        "InputReadinessState",
        "ProcedureStepState",
    ],
)
def test_n_create_without_a_type_1_attribute_is_0120_and_empty_is_0121(keyword: str) -> None:
    absent = n_create()
    delattr(absent, keyword)
    with pytest.raises(ups.MissingAttribute) as missing:
        prepare_create(absent, UID, NOW, "PACSD")
    assert missing.value.status == 0x0120
    assert missing.value.tags
    with pytest.raises(ups.MissingAttributeValue) as empty:
        prepare_create(n_create(**{keyword: ""}), UID, NOW, "PACSD")
    assert empty.value.status == 0x0121


def test_n_create_in_another_state_than_scheduled_is_c309() -> None:
    with pytest.raises(ups.NotScheduled) as refused:
        prepare_create(n_create(ProcedureStepState=IN_PROGRESS), UID, NOW, "PACSD")
    assert refused.value.status == 0xC309


@pytest.mark.parametrize(
    "attributes",
    [
        {"TransactionUID": TRANSACTION},  # 2/2 "shall be empty"
        {"ScheduledProcedureStepPriority": "URGENT"},  # HIGH, MEDIUM, LOW
        {"InputReadinessState": "MAYBE"},
        {"SOPInstanceUID": "1.2.3"},  # Not allowed; a different one is refused
        {"ProcedureStepProgressInformationSequence": Sequence([Dataset()])},  # empty at creation
    ],
)
def test_n_create_with_a_value_the_table_forbids_is_0106(attributes: dict[str, object]) -> None:
    with pytest.raises(ups.InvalidAttributeValue) as refused:
        prepare_create(n_create(**attributes), UID, NOW, "PACSD")
    assert refused.value.status == 0x0106


def test_n_create_whose_values_pacsd_replaces_is_b300() -> None:
    _stored, status = prepare_create(
        n_create(ScheduledProcedureStepModificationDateTime="20200101"), UID, NOW, "PACSD"
    )
    assert status == ups.CREATED_WITH_MODIFICATIONS == 0xB300


def test_n_set_while_scheduled_needs_no_transaction_uid_and_refuses_one() -> None:
    change = Dataset()
    change.ProcedureStepLabel = "CAD, both sides"
    outcome = apply_n_set(workitem(), change, NOW)
    assert outcome.item.attributes.ProcedureStepLabel == "CAD, both sides"
    change.TransactionUID = TRANSACTION
    with pytest.raises(ups.NotInProgress) as refused:
        apply_n_set(workitem(), change, NOW)
    assert refused.value.status == 0xC310


@pytest.mark.parametrize("given", [None, OTHER_TRANSACTION])
def test_n_set_in_progress_without_the_transaction_uid_is_c301(given: str | None) -> None:
    change = Dataset()
    change.ProcedureStepLabel = "x"
    if given:
        change.TransactionUID = given
    with pytest.raises(ups.WrongTransactionUid) as refused:
        apply_n_set(workitem(IN_PROGRESS, TRANSACTION), change, NOW)
    assert refused.value.status == 0xC301


@pytest.mark.parametrize("state", [COMPLETED, CANCELED])
def test_n_set_after_the_final_state_is_c300(state: str) -> None:
    with pytest.raises(ups.MayNoLongerBeUpdated) as refused:
        apply_n_set(workitem(state, TRANSACTION), performed(), NOW)
    assert refused.value.status == 0xC300


@pytest.mark.parametrize("keyword", ["PatientName", "ProcedureStepState", "SOPInstanceUID"])
def test_n_set_of_an_attribute_not_allowed_is_0105(keyword: str) -> None:
    change = Dataset()
    setattr(change, keyword, "1.2.3" if keyword == "SOPInstanceUID" else "X")
    with pytest.raises(ups.NoSuchAttribute) as refused:
        apply_n_set(workitem(), change, NOW)
    assert refused.value.status == 0x0105
    assert refused.value.tags


def test_n_set_emptying_a_type_1_value_is_0121() -> None:
    change = Dataset()
    change.ScheduledProcedureStepPriority = ""
    with pytest.raises(ups.MissingAttributeValue):
        apply_n_set(workitem(), change, NOW)


def test_n_set_reports_progress_readiness_and_assignment() -> None:
    progress = Dataset()
    progress.ProcedureStepProgress = "50"
    change = Dataset()
    change.TransactionUID = TRANSACTION
    change.ProcedureStepProgressInformationSequence = Sequence([progress])
    change.InputReadinessState = "INCOMPLETE"
    performer = Dataset()
    performer.HumanPerformerCodeSequence = Sequence([code("JD", "Dr Doe")])
    performer.HumanPerformerName = "Doe^John"
    performer.HumanPerformerOrganization = "Radiology"
    change.ScheduledHumanPerformersSequence = Sequence([performer])
    outcome = apply_n_set(workitem(IN_PROGRESS, TRANSACTION), change, NOW)
    types = [report.event_type for report in outcome.reports]
    assert types == [ups.STATE_REPORT, ups.PROGRESS_REPORT, ups.ASSIGNED]
    assigned = outcome.reports[2].information
    assert assigned.HumanPerformerOrganization == "Radiology"
    assert "TransactionUID" not in outcome.item.attributes


# Table CC.1.1-2, row by row: (request, state, given Transaction UID) -> status or new state.
@pytest.mark.parametrize(
    ("requested", "state", "given", "expected"),
    [
        (IN_PROGRESS, SCHEDULED, TRANSACTION, IN_PROGRESS),
        (IN_PROGRESS, IN_PROGRESS, TRANSACTION, 0xC302),
        (IN_PROGRESS, COMPLETED, TRANSACTION, 0xC300),
        (IN_PROGRESS, CANCELED, TRANSACTION, 0xC300),
        (IN_PROGRESS, SCHEDULED, None, 0xC301),
        (IN_PROGRESS, IN_PROGRESS, OTHER_TRANSACTION, 0xC301),
        (IN_PROGRESS, COMPLETED, OTHER_TRANSACTION, 0xC301),
        (SCHEDULED, SCHEDULED, TRANSACTION, 0xC303),
        (SCHEDULED, IN_PROGRESS, TRANSACTION, 0xC303),
        (SCHEDULED, COMPLETED, TRANSACTION, 0xC303),
        (COMPLETED, SCHEDULED, TRANSACTION, 0xC310),
        (COMPLETED, COMPLETED, TRANSACTION, 0xB306),
        (COMPLETED, CANCELED, TRANSACTION, 0xC300),
        (COMPLETED, SCHEDULED, None, 0xC301),
        (COMPLETED, IN_PROGRESS, OTHER_TRANSACTION, 0xC301),
        (COMPLETED, COMPLETED, OTHER_TRANSACTION, 0xC301),
        (CANCELED, SCHEDULED, TRANSACTION, 0xC310),
        (CANCELED, COMPLETED, TRANSACTION, 0xC300),
        (CANCELED, CANCELED, TRANSACTION, 0xB304),
        (CANCELED, IN_PROGRESS, None, 0xC301),
        (CANCELED, CANCELED, OTHER_TRANSACTION, 0xC301),
    ],
)
def test_change_state_follows_table_cc_1_1_2(
    requested: str, state: str, given: str | None, expected: str | int
) -> None:
    item = workitem(state, "" if state == SCHEDULED else TRANSACTION)
    info = action(requested, given)
    if isinstance(expected, str):
        outcome = change_state(item, info, "PERFORMER", NOW)
        assert (outcome.item.state, outcome.status, outcome.changed) == (expected, 0, True)
        assert outcome.item.transaction_uid == TRANSACTION
        assert [report.event_type for report in outcome.reports] == [ups.STATE_REPORT]
    elif expected in (ups.ALREADY_COMPLETED, ups.ALREADY_CANCELED):
        outcome = change_state(item, info, "PERFORMER", NOW)
        assert (outcome.status, outcome.changed, outcome.reports) == (expected, False, [])
    else:
        with pytest.raises(ups.UpsRefused) as refused:
            change_state(item, info, "PERFORMER", NOW)
        assert refused.value.status == expected


def test_completed_needs_the_final_state_requirements_c304() -> None:
    item = workitem(IN_PROGRESS, TRANSACTION)
    with pytest.raises(ups.FinalStateNotMet) as refused:
        change_state(item, action(COMPLETED), "PERFORMER", NOW)
    assert refused.value.status == 0xC304
    assert "UnifiedProcedureStepPerformedProcedureSequence" in refused.value.comment
    ready = apply_n_set(item, performed(), NOW).item
    done = change_state(ready, action(COMPLETED), "PERFORMER", NOW)
    assert done.item.state == COMPLETED
    assert done.reports[0].information.ProcedureStepState == COMPLETED


def test_canceled_needs_a_discontinuation_reason_and_gets_its_date_time() -> None:
    item = workitem(IN_PROGRESS, TRANSACTION)
    with pytest.raises(ups.FinalStateNotMet) as refused:
        change_state(item, action(CANCELED), "PERFORMER", NOW)
    assert "ProcedureStepDiscontinuationReasonCodeSequence" in refused.value.comment
    reason = Dataset()
    reason.ReasonForCancellation = "Patient left"
    reason.ProcedureStepDiscontinuationReasonCodeSequence = Sequence([code("110505", "Refused")])
    change = Dataset()
    change.TransactionUID = TRANSACTION
    change.ProcedureStepProgressInformationSequence = Sequence([reason])
    ready = apply_n_set(item, change, NOW).item
    canceled = change_state(ready, action(CANCELED), "PERFORMER", NOW)
    progress = canceled.item.attributes.ProcedureStepProgressInformationSequence[0]
    assert progress.ProcedureStepCancellationDateTime.startswith("20261207")  # SCP fills it
    assert canceled.reports[0].information.ReasonForCancellation == "Patient left"


def test_request_cancel_of_a_scheduled_workitem_cancels_it_and_reports_each_step() -> None:
    info = Dataset()
    info.ReasonForCancellation = "Ordered twice"
    outcome = request_cancel(workitem(), info, "RIS", False, NOW)
    assert outcome.item.state == CANCELED
    states = [r.information.get("ProcedureStepState") for r in outcome.reports]
    assert [r.event_type for r in outcome.reports] == [2, 1, 1]
    assert states == [None, IN_PROGRESS, CANCELED]
    assert outcome.reports[0].information.RequestingAE == "RIS"
    progress = outcome.item.attributes.ProcedureStepProgressInformationSequence[0]
    assert progress.ProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110513"


def test_request_cancel_statuses_of_table_cc_2_2_2() -> None:
    in_progress = workitem(IN_PROGRESS, TRANSACTION)
    told = request_cancel(in_progress, Dataset(), "RIS", True, NOW)
    assert (told.changed, [r.event_type for r in told.reports]) == (False, [2])
    with pytest.raises(ups.PerformerUnreachable) as unreachable:
        request_cancel(in_progress, Dataset(), "RIS", False, NOW)
    assert unreachable.value.status == 0xC312
    with pytest.raises(ups.AlreadyCompleted) as completed:
        request_cancel(workitem(COMPLETED, TRANSACTION), Dataset(), "RIS", True, NOW)
    assert completed.value.status == 0xC311
    again = request_cancel(workitem(CANCELED, TRANSACTION), Dataset(), "RIS", True, NOW)
    assert (again.status, again.reports) == (0xB304, [])


def test_subscription_requests_follow_table_cc_2_3_1() -> None:
    info = Dataset()
    info.ReceivingAE, info.DeletionLock = "WATCHER", "TRUE"
    assert subscription_request(ups.SUBSCRIBE, UID, info)[:2] == ("WATCHER", True)
    info.DeletionLock = "MAYBE"
    with pytest.raises(ups.InvalidArgumentValue):
        subscription_request(ups.SUBSCRIBE, UID, info)
    with pytest.raises(ups.ActionNotAppropriate) as suspend:
        subscription_request(ups.SUSPEND_GLOBAL, UID, info)
    assert suspend.value.status == 0xC314
    info.DeletionLock = "FALSE"
    with pytest.raises(ups.InvalidArgumentValue):  # filtered, but no Matching Keys
        subscription_request(ups.SUBSCRIBE, ups.FILTERED_GLOBAL_SUBSCRIPTION, info)
    info.WorklistLabel = "CAD"
    _ae, _lock, keys = subscription_request(ups.SUBSCRIBE, ups.FILTERED_GLOBAL_SUBSCRIPTION, info)
    assert list(keys.keys()) == [0x00741202]


def test_state_report_of_a_non_ascii_workitem_keeps_its_character_set() -> None:
    stored, _ = prepare_create(
        n_create(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen"), UID, NOW, "X"
    )
    info = ups.state_report(stored)
    assert (info.ProcedureStepState, info.InputReadinessState) == (SCHEDULED, "READY")
    assert info.SpecificCharacterSet == "ISO_IR 192"
