"""Unified Procedure Step rules (PS3.4 Annex CC): pure checks and transitions, no I/O.

- N-CREATE: the N-CREATE column of Table CC.2.5-3 read from the SCU side (Type 1 present with a
  value: 0x0120 / 0x0121; "shall be empty": 0x0106; Procedure Step State SCHEDULED: 0xC309), the
  SCP side filled in (absent Type 2 attributes kept empty, SOP Class UID, Worklist Label,
  Scheduled Procedure Step Modification DateTime).
- N-SET: CC.2.6.3 with Table CC.2.6-1 (0xC300, 0xC301, 0xC310); "Not allowed" attributes 0x0105.
- N-ACTION Change UPS State: Table CC.1.1-2 cell by cell, statuses of Table CC.2.1-2; the final
  state is judged by the Final State codes (Table CC.2.5-1) of Table CC.2.5-3.
- N-ACTION Request UPS Cancel: CC.2.2.3, Table CC.2.2-2. Subscriptions: Table CC.2.3-1.
- The Event Information of each N-EVENT-REPORT: Table CC.2.4-1.
A transition returns an `Outcome`: the workitem as it becomes, a warning status, and the event
reports its subscribers get. The index (index/ups.py) applies it under a row lock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from pacsd.dicom.mpps import apply_set

# PS3.4 CC.3.1: every UPS is an instance of UPS Push.
from pacsd.dicom.sop_classes import UPS_PUSH as UPS_PUSH
from pacsd.errors import DicomStatusError

UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
UPS_QUERY = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"  # PS3.4 CC.2.3.2, well-known instances
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL_INSTANCES = frozenset({GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION})

# Procedure Step State (0074,1000), PS3.4 Table CC.1.1-1.
SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED = "SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED"
STATES = frozenset({SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED})
FINAL_STATES = frozenset({CANCELED, COMPLETED})
# Action Type IDs (Tables CC.2.1-1, CC.2.2-1, CC.2.3-1) and Event Type IDs (Table CC.2.4-1).
CHANGE_STATE, REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE, SUSPEND_GLOBAL = 1, 2, 3, 4, 5
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5
# Warnings (Tables CC.2.1-2, CC.2.2-2, CC.2.3-3, CC.2.5-4, CC.2.7-1).
OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
CREATED_WITH_MODIFICATIONS = 0xB300
DELETION_LOCK_NOT_GRANTED = 0xB301
ALREADY_CANCELED = 0xB304
ALREADY_COMPLETED = 0xB306
# PS3.16 CID 9300, used when a cancellation gives no reason.
UNSPECIFIED_REASON = ("110513", "DCM", "Discontinued for unspecified reason")
_ENUMERATED = {
    "ScheduledProcedureStepPriority": frozenset({"HIGH", "MEDIUM", "LOW"}),  # PS3.3 C.30.1
    "InputReadinessState": frozenset({"INCOMPLETE", "UNAVAILABLE", "READY"}),
}


class UpsRefused(DicomStatusError):
    """A UPS request the rules refuse, with the attributes at fault (Attribute Identifier List)."""

    def __init__(self, comment: str, tags: Iterable[int] = ()) -> None:
        super().__init__(comment if len(comment) <= 64 else comment[:61] + "...")
        self.tags: list[int] = list(dict.fromkeys(int(tag) for tag in tags))


def _refusal(name: str, code: int, meaning: str) -> type[UpsRefused]:
    return type(name, (UpsRefused,), {"status": code, "__doc__": meaning})


NoSuchAttribute = _refusal("NoSuchAttribute", 0x0105, "PS3.7 C.5.17: not settable here")
InvalidAttributeValue = _refusal("InvalidAttributeValue", 0x0106, "PS3.7 C.5.11")
InvalidArgumentValue = _refusal("InvalidArgumentValue", 0x0115, "PS3.7 C.5.5: Action Info")
MissingAttribute = _refusal("MissingAttribute", 0x0120, "PS3.7 C.5.13")
MissingAttributeValue = _refusal("MissingAttributeValue", 0x0121, "PS3.7 C.5.14")
MayNoLongerBeUpdated = _refusal("MayNoLongerBeUpdated", 0xC300, "The UPS may no longer be updated")
WrongTransactionUid = _refusal("WrongTransactionUid", 0xC301, "Correct Transaction UID not given")
AlreadyInProgress = _refusal("AlreadyInProgress", 0xC302, "The UPS is already IN PROGRESS")
OnlyCreateSchedules = _refusal("OnlyCreateSchedules", 0xC303, "SCHEDULED only via N-CREATE")
FinalStateNotMet = _refusal("FinalStateNotMet", 0xC304, "Final state requirements not met")
NoSuchWorkitem = _refusal("NoSuchWorkitem", 0xC307, "No such UPS instance managed here")
UnknownReceivingAE = _refusal("UnknownReceivingAE", 0xC308, "Receiving AE unknown to this SCP")
NotScheduled = _refusal("NotScheduled", 0xC309, "Provided UPS State was not SCHEDULED")
NotInProgress = _refusal("NotInProgress", 0xC310, "The UPS is not yet IN PROGRESS")
AlreadyCompleted = _refusal("AlreadyCompleted", 0xC311, "The UPS is already COMPLETED")
PerformerUnreachable = _refusal("PerformerUnreachable", 0xC312, "Performer cannot be contacted")
ActionNotAppropriate = _refusal("ActionNotAppropriate", 0xC314, "Action not for this instance")


@dataclass(frozen=True)
class Rule:
    """One row of Table CC.2.5-3: the SCU's requirement for N-CREATE and N-SET, the Final State.

    `create`: "1", "2", "3" or "empty" (2/2 "shall be empty"; "Not allowed" in the items);
    `n_set`: "1" (1/1), "v" (3/1: a value when sent), "3", or "-" (Not allowed); `final`: R,
    P, X or O (Table CC.2.5-1).
    """

    keyword: str
    create: str
    n_set: str
    final: str = "O"
    item: tuple[Rule, ...] = ()
    tag: int = field(init=False)

    def __post_init__(self) -> None:
        tag = tag_for_keyword(self.keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {self.keyword}")
        object.__setattr__(self, "tag", tag)


_PERFORMER_ITEM = (
    Rule("HumanPerformerCodeSequence", "1", "1"),
    Rule("HumanPerformerName", "1", "1"),
    Rule("HumanPerformerOrganization", "1", "1"),
)
_PROGRESS_ITEM = (
    Rule("ProcedureStepCancellationDateTime", "3", "v", "X"),
    Rule("ProcedureStepDiscontinuationReasonCodeSequence", "3", "v", "X"),
    Rule("ProcedureStepCommunicationsURISequence", "3", "v", item=(Rule("ContactURI", "1", "1"),)),
)
_PERFORMED_ITEM = (
    Rule("PerformedStationNameCodeSequence", "3", "3", "P"),
    Rule("PerformedProcedureStepStartDateTime", "3", "v", "P"),
    Rule("PerformedWorkitemCodeSequence", "3", "v", "P"),
    Rule("PerformedProcedureStepEndDateTime", "3", "v", "P"),
    Rule("OutputInformationSequence", "3", "3", "P"),  # P, "may have no items"
)
# PS3.4 Table CC.2.5-3, the rows pacsd checks or fills, in the table's order. The other
# attributes of the UPS IOD are 3/3, final state O: kept as sent.
TABLE_CC_2_5_3: tuple[Rule, ...] = (
    Rule("ScheduledProcedureStepPriority", "1", "v", "R"),
    Rule("ScheduledProcedureStepModificationDateTime", "3", "3", "R"),  # maintained by the SCP
    Rule("ProcedureStepLabel", "1", "v"),
    Rule("WorklistLabel", "2", "v"),  # 2/1: the SCP gives it a value
    Rule("ScheduledProcessingParametersSequence", "2", "3"),
    Rule("ScheduledStationNameCodeSequence", "2", "3"),
    Rule("ScheduledStationClassCodeSequence", "2", "3"),
    Rule("ScheduledStationGeographicLocationCodeSequence", "2", "3"),
    Rule("ScheduledHumanPerformersSequence", "3", "3", item=_PERFORMER_ITEM),
    Rule("ScheduledProcedureStepStartDateTime", "1", "v", "R"),
    Rule("ExpectedCompletionDateTime", "3", "v"),
    Rule("ScheduledWorkitemCodeSequence", "2", "v"),
    Rule("CommentsOnTheScheduledProcedureStep", "2", "v"),
    Rule("InputReadinessState", "1", "v", "R"),
    Rule("InputInformationSequence", "2", "3"),
    Rule("PatientName", "2", "-"),
    Rule("PatientID", "2", "-"),
    Rule("IssuerOfPatientID", "3", "-"),
    Rule("IssuerOfPatientIDQualifiersSequence", "3", "-"),
    Rule("PatientBirthDate", "2", "-"),
    Rule("PatientSex", "2", "-"),
    Rule("AdmissionID", "2", "-"),
    Rule("IssuerOfAdmissionIDSequence", "2", "-"),
    Rule("AdmittingDiagnosesDescription", "2", "-"),
    Rule("AdmittingDiagnosesCodeSequence", "2", "-"),
    Rule("ReferencedRequestSequence", "2", "-", item=(Rule("StudyInstanceUID", "1", "1"),)),
    Rule(
        "ReplacedProcedureStepSequence",
        "3",
        "-",
        item=(Rule("ReferencedSOPClassUID", "1", "1"), Rule("ReferencedSOPInstanceUID", "1", "1")),
    ),
    Rule("ProcedureStepState", "1", "-", "R"),
    Rule("ProcedureStepProgressInformationSequence", "empty", "3", "X", item=_PROGRESS_ITEM),
    Rule("UnifiedProcedureStepPerformedProcedureSequence", "empty", "3", "P", _PERFORMED_ITEM),
)
_IDENTITY = ("SOPClassUID", "SOPInstanceUID")  # Not allowed in N-SET; in the command instead
_MAY_BE_EMPTY = frozenset({int(tag_for_keyword("OutputInformationSequence") or 0)})
TRANSACTION_UID = 0x00081195


@dataclass(frozen=True)
class Workitem:
    """A UPS as stored: its attributes and what the SCP keeps beside them."""

    sop_instance_uid: str
    state: str
    transaction_uid: str
    performer: str
    attributes: Dataset


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT: Event Type ID and Event Information (Table CC.2.4-1)."""

    event_type: int
    information: Dataset


@dataclass
class Outcome:
    """What a request does to a workitem: how it becomes, its status, the reports it causes."""

    item: Workitem
    status: int = 0x0000
    changed: bool = True
    reports: list[Report] = field(default_factory=list)


def prepare_create(
    attributes: Dataset, uid: str, now: datetime, worklist_label: str
) -> tuple[Dataset, int]:
    """Check an N-CREATE Attribute List; the workitem to store and the status (0 or B300)."""
    missing, empty = _required(attributes, TABLE_CC_2_5_3, "create")
    if missing:
        raise MissingAttribute(_comment("Missing", missing), missing)
    if empty:
        raise MissingAttributeValue(_comment("No value for", empty), empty)
    given = _text(attributes, "SOPInstanceUID")
    if given and given != uid:  # Not allowed: the UID travels in the command (Table CC.2.5-3)
        raise InvalidAttributeValue("SOPInstanceUID differs from the request's", [0x00080018])
    if _text(attributes, "TransactionUID"):
        raise InvalidAttributeValue("TransactionUID shall be empty", [TRANSACTION_UID])
    not_empty = [r.tag for r in TABLE_CC_2_5_3 if r.create == "empty" and _items(attributes, r)]
    if not_empty:
        raise InvalidAttributeValue(_comment("Shall be empty:", not_empty), not_empty)
    if _text(attributes, "ProcedureStepState") != SCHEDULED:  # CC.2.5.3
        raise NotScheduled("The provided UPS State was not SCHEDULED", [_tag("ProcedureStepState")])
    _check_enumerated(attributes)
    stored = copy.deepcopy(attributes)
    status = 0x0000
    if TRANSACTION_UID in stored:
        del stored[TRANSACTION_UID]  # kept apart; never returned (CC.2.7.3)
    for rule in TABLE_CC_2_5_3:
        if rule.create in ("2", "empty") and rule.tag not in stored:
            _add_empty(stored, rule.tag)
    if _text(stored, "SOPClassUID") not in ("", UPS_PUSH):
        status = CREATED_WITH_MODIFICATIONS  # CC.2.5.1.3.1: set by the SCP
    if _text(stored, "ScheduledProcedureStepModificationDateTime"):
        status = CREATED_WITH_MODIFICATIONS  # the SCP maintains it
    stored.SOPClassUID, stored.SOPInstanceUID = UPS_PUSH, uid
    if not _text(stored, "WorklistLabel"):
        stored.WorklistLabel = worklist_label
    stored.ScheduledProcedureStepModificationDateTime = _dt(now)
    return stored, status


def creation_reports(attributes: Dataset) -> list[Report]:
    """CC.2.4.3: a new workitem's State Report (SCHEDULED) and UPS Assigned reports."""
    assigned = [Report(ASSIGNED, info) for info in assigned_reports(attributes)]
    return [Report(STATE_REPORT, state_report(attributes)), *assigned]


def apply_n_set(item: Workitem, modification: Dataset, now: datetime) -> Outcome:
    """CC.2.6.3: apply a Modification List; the reports of CC.2.4.3 it causes."""
    if item.state in FINAL_STATES:
        raise MayNoLongerBeUpdated(f"The UPS is {item.state}: it may no longer be updated")
    given = _text(modification, "TransactionUID")
    if item.state == SCHEDULED and given:  # CC.2.6.2: a SCHEDULED UPS has no Transaction UID
        raise NotInProgress("The UPS is not IN PROGRESS: no Transaction UID applies")
    if item.state == IN_PROGRESS and given != item.transaction_uid:
        raise WrongTransactionUid("The correct Transaction UID was not provided")
    changes = copy.deepcopy(modification)
    if TRANSACTION_UID in changes:
        del changes[TRANSACTION_UID]
    refused = [r.tag for r in TABLE_CC_2_5_3 if r.n_set == "-" and r.tag in changes]
    refused += [_tag(keyword) for keyword in _IDENTITY if keyword in changes]
    if refused:
        raise NoSuchAttribute(_comment("Not settable by N-SET:", refused), refused)
    # N-SET requires only what it sends, but a sequence it sends comes whole (CC.2.6.2).
    sent = [rule for rule in TABLE_CC_2_5_3 if rule.tag in changes]
    missing, empty = _required(changes, sent, "n_set")
    if missing or empty:
        raise MissingAttributeValue(_comment("No value for", missing + empty), missing + empty)
    _check_enumerated(changes)
    updated = apply_set(item.attributes, changes)
    updated.ScheduledProcedureStepModificationDateTime = _dt(now)
    return Outcome(replace(item, attributes=updated), reports=_set_reports(item, changes, updated))


def _set_reports(item: Workitem, changes: Dataset, updated: Dataset) -> list[Report]:
    """CC.2.4.3: Input Readiness State changed, progress changed, the step (re)assigned."""
    reports = []
    before = item.attributes
    if _text(updated, "InputReadinessState") != _text(before, "InputReadinessState"):
        reports.append(Report(STATE_REPORT, state_report(updated)))
    if _progress(updated) != _progress(before):
        reports.append(Report(PROGRESS_REPORT, progress_report(updated)))
    assigning = ("ScheduledStationNameCodeSequence", "ScheduledHumanPerformersSequence")
    if any(keyword in changes for keyword in assigning):
        reports.extend(Report(ASSIGNED, info) for info in assigned_reports(updated))
    return reports


def change_state(item: Workitem, info: Dataset, calling_ae: str, now: datetime) -> Outcome:
    """Change UPS State (CC.2.1.3), one cell of Table CC.1.1-2 per (request, state)."""
    requested = _text(info, "ProcedureStepState")
    if requested not in STATES:
        raise InvalidArgumentValue(f"ProcedureStepState {requested!r} is no UPS state")
    if requested == SCHEDULED:
        raise OnlyCreateSchedules("The UPS may only become SCHEDULED via N-CREATE")
    given = _text(info, "TransactionUID")
    if len(given) > 64:  # PS3.5 9.1
        raise InvalidArgumentValue("TransactionUID is longer than a UID", [TRANSACTION_UID])
    # A SCHEDULED UPS takes the Transaction UID it is given; in any other state it must match.
    if not given or (item.state != SCHEDULED and given != item.transaction_uid):
        raise WrongTransactionUid("The correct Transaction UID was not provided")
    if requested == IN_PROGRESS:
        if item.state == IN_PROGRESS:
            raise AlreadyInProgress("The UPS is already IN PROGRESS")
        if item.state in FINAL_STATES:
            raise MayNoLongerBeUpdated(f"The UPS is {item.state}: it may no longer be updated")
        return _to_state(
            replace(item, transaction_uid=given, performer=calling_ae), IN_PROGRESS, now
        )
    if item.state == SCHEDULED:
        raise NotInProgress("The UPS is not yet IN PROGRESS")
    if item.state == requested:
        warning = ALREADY_COMPLETED if requested == COMPLETED else ALREADY_CANCELED
        return Outcome(item, warning, changed=False)
    if item.state in FINAL_STATES:
        raise MayNoLongerBeUpdated(f"The UPS is {item.state}: it may no longer be updated")
    return _to_state(item, requested, now)


def request_cancel(
    item: Workitem, info: Dataset, calling_ae: str, subscribed: bool, now: datetime
) -> Outcome:
    """Request UPS Cancel (CC.2.2.3, Table CC.1.1-2): report it to the subscribers; a SCHEDULED
    UPS is canceled by the SCP itself (IN PROGRESS, then CANCELED, each reported)."""
    if item.state == COMPLETED:
        raise AlreadyCompleted("The UPS is already COMPLETED")
    if item.state == CANCELED:
        return Outcome(item, ALREADY_CANCELED, changed=False)
    requested = Report(CANCEL_REQUESTED, cancel_requested_report(info, calling_ae))
    if item.state == IN_PROGRESS:
        if not subscribed:  # no performing SCU can be told (CC.2.2.3)
            raise PerformerUnreachable("The performer cannot be contacted: no subscriber")
        return Outcome(item, changed=False, reports=[requested])
    started = _to_state(item, IN_PROGRESS, now)
    attributes = copy.deepcopy(started.item.attributes)
    _record_cancel_request(attributes, info)
    ended = _to_state(replace(started.item, attributes=attributes), CANCELED, now)
    ended.reports[:0] = [requested, *started.reports]
    return ended


def _to_state(item: Workitem, state: str, now: datetime) -> Outcome:
    attributes = copy.deepcopy(item.attributes)
    attributes.ProcedureStepState = state
    if state == CANCELED:
        progress = _progress_item(attributes)
        # Table CC.2.5-3: an empty Procedure Step Cancellation DateTime is filled by the SCP.
        if not _text(progress, "ProcedureStepCancellationDateTime"):
            progress.ProcedureStepCancellationDateTime = _dt(now)
    if state in FINAL_STATES:
        unmet = final_state_unmet(attributes, state)
        if unmet:
            raise FinalStateNotMet(_comment("Final state: no", unmet))
    attributes.ScheduledProcedureStepModificationDateTime = _dt(now)
    moved = replace(item, state=state, attributes=attributes)
    return Outcome(moved, reports=[Report(STATE_REPORT, state_report(attributes))])


def final_state_unmet(attributes: Dataset, state: str) -> list[int]:
    """The attributes without a value that Table CC.2.5-1's codes require for `state`."""
    codes = {"R", "P"} if state == COMPLETED else {"R", "X"}
    return _unmet(attributes, TABLE_CC_2_5_3, codes)


def _unmet(dataset: Dataset, rules: Sequence[Rule], codes: set[str]) -> list[int]:
    found: list[int] = []
    for rule in rules:
        if rule.final not in codes:
            continue
        element = dataset.get(rule.tag)
        if element is None or (not _has_value(element) and rule.tag not in _MAY_BE_EMPTY):
            found.append(rule.tag)
        elif rule.item and element.VR == "SQ":
            for item in element.value:
                found.extend(_unmet(item, rule.item, codes))
    return found


def _record_cancel_request(attributes: Dataset, info: Dataset) -> None:
    """CC.2.2.3: the SCP cancels a SCHEDULED UPS and meets the final state with what the
    request gave (reason, discontinuation code, contact), else an unspecified reason."""
    progress = _progress_item(attributes)
    if "ReasonForCancellation" in info:
        progress.ReasonForCancellation = info.ReasonForCancellation
    codes = info.get("ProcedureStepDiscontinuationReasonCodeSequence")
    progress.ProcedureStepDiscontinuationReasonCodeSequence = (
        copy.deepcopy(codes) if codes else DicomSequence([_code(*UNSPECIFIED_REASON)])
    )
    if _text(info, "ContactURI"):
        contact = Dataset()
        contact.ContactURI = info.ContactURI
        if "ContactDisplayName" in info:
            contact.ContactDisplayName = info.ContactDisplayName
        progress.ProcedureStepCommunicationsURISequence = DicomSequence([contact])
    sent = info.get("SpecificCharacterSet")
    if sent and sent != attributes.get("SpecificCharacterSet"):
        attributes.SpecificCharacterSet = "ISO_IR 192"  # holds the text of both (PS3.5 6.1)


def subscription_request(action_type: int, uid: str, info: Dataset) -> tuple[str, bool, Dataset]:
    """Table CC.2.3-1: (Receiving AE, Deletion Lock, Matching Keys) of a (un)subscribe request."""
    receiving = _text(info, "ReceivingAE")
    if not receiving:
        raise InvalidArgumentValue("ReceivingAE missing", [_tag("ReceivingAE")])
    if action_type == SUSPEND_GLOBAL and uid not in GLOBAL_INSTANCES:
        raise ActionNotAppropriate("Suspend Global Subscription needs a global instance UID")
    lock = False
    if action_type == SUBSCRIBE:
        flag = _text(info, "DeletionLock")
        if flag not in ("TRUE", "FALSE"):
            raise InvalidArgumentValue("DeletionLock must be TRUE or FALSE", [_tag("DeletionLock")])
        lock = flag == "TRUE"
    keys = Dataset()
    for element in info:
        if element.keyword not in ("ReceivingAE", "DeletionLock"):
            keys.add(copy.deepcopy(element))
    matching = [element for element in keys if element.keyword != "SpecificCharacterSet"]
    if action_type == SUBSCRIBE and uid == FILTERED_GLOBAL_SUBSCRIPTION and not matching:
        raise InvalidArgumentValue("A Filtered Global Subscription needs Matching Keys")
    return receiving, lock, keys


def state_report(attributes: Dataset) -> Dataset:
    """UPS State Report (event 1): the states, and why a CANCELED UPS was canceled."""
    info = Dataset()
    info.ProcedureStepState = _text(attributes, "ProcedureStepState")
    info.InputReadinessState = _text(attributes, "InputReadinessState")
    if info.ProcedureStepState == CANCELED:
        progress = _first_item(attributes, "ProcedureStepProgressInformationSequence")
        for keyword in ("ReasonForCancellation", "ProcedureStepDiscontinuationReasonCodeSequence"):
            if progress is not None and keyword in progress:
                info[keyword] = copy.deepcopy(progress[keyword])
    return _with_character_set(info, attributes)


def cancel_requested_report(info: Dataset, calling_ae: str) -> Dataset:
    """UPS Cancel Requested (event 2): who asked, and what they said (Table CC.2.4-1)."""
    report = Dataset()
    report.RequestingAE = calling_ae
    for keyword in (
        "ReasonForCancellation",
        "ProcedureStepDiscontinuationReasonCodeSequence",
        "ContactURI",
        "ContactDisplayName",
    ):
        if keyword in info:
            report[keyword] = copy.deepcopy(info[keyword])
    return _with_character_set(report, info)


def progress_report(attributes: Dataset) -> Dataset:
    """UPS Progress Report (event 3): the current Procedure Step Progress Information."""
    info = Dataset()
    tag = _tag("ProcedureStepProgressInformationSequence")
    info[tag] = copy.deepcopy(attributes[tag]) if tag in attributes else _empty(tag)
    return _with_character_set(info, attributes)


def assigned_reports(attributes: Dataset) -> list[Dataset]:
    """UPS Assigned (event 5), one per Scheduled Human Performer, with the station names."""
    stations = attributes.get("ScheduledStationNameCodeSequence") or []
    performers = list(attributes.get("ScheduledHumanPerformersSequence") or [])
    reports = []
    for performer in performers or ([Dataset()] if stations else []):
        info = Dataset()
        if stations:
            info.ScheduledStationNameCodeSequence = copy.deepcopy(stations)
        for keyword in ("HumanPerformerCodeSequence", "HumanPerformerOrganization"):
            if keyword in performer:
                info[keyword] = copy.deepcopy(performer[keyword])
        reports.append(_with_character_set(info, attributes))
    return reports


def scp_status_report() -> Dataset:
    """SCP Status Change (event 4) sent at start-up: subscriptions and workitems kept."""
    info = Dataset()
    info.SCPStatus = "RESTARTED"
    info.SubscriptionListStatus = "WARM START"
    info.UnifiedProcedureStepListStatus = "WARM START"
    return info


def _required(dataset: Dataset, rules: Sequence[Rule], column: str) -> tuple[list[int], list[int]]:
    """(absent, empty) attributes that a column requires ("1"; "v": a value when present), in
    the items too."""
    missing: list[int] = []
    empty: list[int] = []
    for rule in rules:
        requirement = rule.create if column == "create" else rule.n_set
        element = dataset.get(rule.tag)
        if element is None:
            if requirement == "1":
                missing.append(rule.tag)
            continue
        if requirement in ("1", "v") and not _has_value(element):
            empty.append(rule.tag)
        if rule.item and element.VR == "SQ":
            for item in element.value:
                absent, blank = _required(item, rule.item, column)
                missing.extend(absent)
                empty.extend(blank)
    return missing, empty


def _check_enumerated(dataset: Dataset) -> None:
    for keyword, allowed in _ENUMERATED.items():
        if keyword in dataset and _text(dataset, keyword) not in allowed:
            raise InvalidAttributeValue(
                f"{keyword} must be one of {', '.join(sorted(allowed))}", [_tag(keyword)]
            )


def _progress(attributes: Dataset) -> list[tuple[str, str, str]]:
    """What a UPS Progress Report reports on (CC.2.4.3): progress, description, contacts."""
    items = attributes.get("ProcedureStepProgressInformationSequence") or []
    return [
        (
            _text(item, "ProcedureStepProgress"),
            _text(item, "ProcedureStepProgressDescription"),
            repr(item.get("ProcedureStepCommunicationsURISequence")),
        )
        for item in items
    ]


def _progress_item(attributes: Dataset) -> Dataset:
    tag = _tag("ProcedureStepProgressInformationSequence")
    if tag not in attributes or not attributes[tag].value:
        attributes[tag] = DataElement(tag, "SQ", DicomSequence([Dataset()]))
    item: Dataset = attributes[tag].value[0]
    return item


def _first_item(dataset: Dataset, keyword: str) -> Dataset | None:
    items = dataset.get(keyword) or []
    return items[0] if len(items) else None


def _items(dataset: Dataset, rule: Rule) -> bool:
    element = dataset.get(rule.tag)
    return element is not None and element.VR == "SQ" and len(element.value) > 0


def _with_character_set(info: Dataset, source: Dataset) -> Dataset:
    if "SpecificCharacterSet" in source:
        info.SpecificCharacterSet = source.SpecificCharacterSet
    return info


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _add_empty(dataset: Dataset, tag: int) -> None:
    dataset[tag] = _empty(tag)


def _empty(tag: int) -> DataElement:
    vr = dictionary_VR(tag)
    return DataElement(tag, vr, DicomSequence() if vr == "SQ" else None)


def _has_value(element: DataElement) -> bool:
    if element.VR == "SQ":
        return len(element.value) > 0
    if element.is_empty:
        return False
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    return any(str(value).strip() for value in values)


def _text(dataset: Dataset, keyword: str) -> str:
    """An attribute's (first) value as text; '' when absent or empty."""
    tag = _tag(keyword)
    if tag not in dataset:
        return ""
    element = dataset[tag]
    if element.is_empty:
        return ""
    value = element.value
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip()


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _dt(moment: datetime) -> str:
    """A DT value with its UTC offset (PS3.5 6.2)."""
    return moment.strftime("%Y%m%d%H%M%S.%f") + moment.strftime("%z")


def _comment(prefix: str, tags: list[int]) -> str:
    return f"{prefix} {', '.join(keyword_for_tag(tag) or f'{tag:08X}' for tag in tags)}"
