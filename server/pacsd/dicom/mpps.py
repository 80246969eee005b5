"""Modality Performed Procedure Step SOP Class rules (PS3.4 F.7): pure checks, no I/O.

The N-CREATE / N-SET service asks `check_create` and `check_set` before it stores anything and
turns the `MppsRefused` they raise into the response (status, Error Comment, and the tags for the
Attribute Identifier List or the returned Attribute / Modification List, PS3.7 C.5).

Attribute requirements follow PS3.4 Table F.7.2-1 "Modality Performed Procedure Step SOP Class
N-CREATE, N-SET and Final State Attributes", read from the SCU side of each "SCU/SCP" pair: the
request comes from the SCU. The code-value macros (Tables F.7.2-1a to -1f) are not checked here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsd.errors import DicomStatusError

MPPS_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.3"  # PS3.4 F.7.3

# PS3.3 C.4.14: Performed Procedure Step Status (0040,0252), Enumerated Values.
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED})
FINAL_STATUSES = frozenset({COMPLETED, DISCONTINUED})

# PS3.4 Table F.7.2-2: the N-SET failure for a step that is no longer IN PROGRESS.
NO_LONGER_UPDATABLE_COMMENT = "Performed Procedure Step Object may no longer be updated"
NO_LONGER_UPDATABLE_ERROR_ID = 0xA710

ERROR_COMMENT_LIMIT = 64  # PS3.7 C.5: Error Comment (0000,0902) is LO
DEFAULT_CHARACTER_SET = "ISO_IR 6"
UNICODE_CHARACTER_SET = "ISO_IR 192"


class MppsRefused(DicomStatusError):
    """An MPPS request the rules refuse, with the attributes at fault (`tags`, may be empty)."""

    def __init__(self, comment: str, tags: Iterable[int] = ()) -> None:
        super().__init__(_fit(comment))
        self.tags: list[int] = list(dict.fromkeys(int(tag) for tag in tags))


class NoSuchAttribute(MppsRefused):
    """PS3.7 C.5.17 (0x0105): an attribute Table F.7.2-1 marks "Not allowed" for N-SET.

    PS3.4 F.7 names no status for this case; 0105H is the failure whose Attribute Identifier List
    carries the tags (dcm4che's IOD validation answers not-allowed attributes the same way).
    """

    status = 0x0105


class InvalidAttributeValue(MppsRefused):
    """PS3.7 C.5.11 (0x0106): a value the SOP Class does not accept."""

    status = 0x0106


class MissingAttribute(MppsRefused):
    """PS3.7 C.5.13 (0x0120), with an Attribute Identifier List."""

    status = 0x0120


class MissingAttributeValue(MppsRefused):
    """PS3.7 C.5.14 (0x0121): a Type 1 attribute sent without a value."""

    status = 0x0121


class StepNoLongerUpdatable(MppsRefused):
    """PS3.4 F.7.2.2.3 and Table F.7.2-2: Processing failure (0x0110), Error ID A710."""

    status = 0x0110
    error_id = NO_LONGER_UPDATABLE_ERROR_ID

    def __init__(self) -> None:
        super().__init__(NO_LONGER_UPDATABLE_COMMENT)


Requirement = Literal["1", "2", "3"]
NOT_ALLOWED = None


@dataclass(frozen=True)
class Rule:
    """One row of Table F.7.2-1: SCU requirement types for N-CREATE, N-SET and the final state.

    `n_set` is None where the table says "Not allowed"; `final` is set only where the Final State
    column differs from the N-CREATE one (Table F.7.2-1 Note 1).
    """

    keyword: str
    n_create: Requirement
    n_set: Requirement | None
    final: Requirement | None = None
    item: tuple[Rule, ...] = ()
    tag: int = field(init=False)

    def __post_init__(self) -> None:
        tag = tag_for_keyword(self.keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {self.keyword}")
        object.__setattr__(self, "tag", tag)


def _reference(keyword: str, n_create: Requirement, n_set: Requirement | None) -> Rule:
    """A reference sequence whose items need Referenced SOP Class and Instance UID (1/1)."""
    item_n_set: Requirement | None = NOT_ALLOWED if n_set is NOT_ALLOWED else "1"
    uids = (
        Rule("ReferencedSOPClassUID", "1", item_n_set),
        Rule("ReferencedSOPInstanceUID", "1", item_n_set),
    )
    return Rule(keyword, n_create, n_set, item=uids)


_SCHEDULED_STEP_ITEM = (
    Rule("StudyInstanceUID", "1", NOT_ALLOWED),
    _reference("ReferencedStudySequence", "2", NOT_ALLOWED),
    Rule("AccessionNumber", "2", NOT_ALLOWED),
    Rule("RequestedProcedureID", "2", NOT_ALLOWED),
    Rule("RequestedProcedureDescription", "2", NOT_ALLOWED),
    Rule("ScheduledProcedureStepID", "2", NOT_ALLOWED),
    Rule("ScheduledProcedureStepDescription", "2", NOT_ALLOWED),
    Rule("ScheduledProtocolCodeSequence", "2", NOT_ALLOWED),
)

_PERFORMED_SERIES_ITEM = (
    Rule("PerformingPhysicianName", "2", "2"),
    Rule("ProtocolName", "1", "1"),
    Rule("OperatorsName", "2", "2"),
    Rule("SeriesInstanceUID", "1", "1"),
    Rule("SeriesDescription", "2", "2"),
    Rule("RetrieveAETitle", "2", "2"),
    _reference("ReferencedImageSequence", "2", "2"),
    _reference("ReferencedNonImageCompositeSOPInstanceSequence", "2", "2"),
)

# PS3.4 Table F.7.2-1, in the table's order. Type 3 attributes are listed where N-SET may not
# set them; Specific Character Set (1C/1C) is handled by apply_set (F.7.2.2.3).
TABLE_F_7_2_1: tuple[Rule, ...] = (
    # Performed Procedure Step Relationship
    Rule("ScheduledStepAttributesSequence", "1", NOT_ALLOWED, item=_SCHEDULED_STEP_ITEM),
    Rule("PatientName", "2", NOT_ALLOWED),
    Rule("PatientID", "2", NOT_ALLOWED),
    Rule("IssuerOfPatientID", "3", NOT_ALLOWED),
    Rule("IssuerOfPatientIDQualifiersSequence", "3", NOT_ALLOWED),
    Rule("OtherPatientIDsSequence", "3", NOT_ALLOWED),
    Rule("PatientBirthDate", "2", NOT_ALLOWED),
    Rule("PatientSex", "2", NOT_ALLOWED),
    _reference("ReferencedPatientSequence", "2", NOT_ALLOWED),
    Rule("AdmissionID", "3", NOT_ALLOWED),
    Rule("IssuerOfAdmissionIDSequence", "3", NOT_ALLOWED),
    Rule("ServiceEpisodeID", "3", NOT_ALLOWED),
    Rule("IssuerOfServiceEpisodeIDSequence", "3", NOT_ALLOWED),
    Rule("ServiceEpisodeDescription", "3", NOT_ALLOWED),
    # Performed Procedure Step Information
    Rule("PerformedProcedureStepID", "1", NOT_ALLOWED),
    Rule("PerformedStationAETitle", "1", NOT_ALLOWED),
    Rule("PerformedStationName", "2", NOT_ALLOWED),
    Rule("PerformedLocation", "2", NOT_ALLOWED),
    Rule("PerformedProcedureStepStartDate", "1", NOT_ALLOWED),
    Rule("PerformedProcedureStepStartTime", "1", NOT_ALLOWED),
    Rule("PerformedProcedureStepStatus", "1", "3"),
    Rule("PerformedProcedureStepDescription", "2", "3"),
    Rule("PerformedProcedureTypeDescription", "2", "3"),
    Rule("ProcedureCodeSequence", "2", "3"),
    Rule("PerformedProcedureStepEndDate", "2", "3", final="1"),
    Rule("PerformedProcedureStepEndTime", "2", "3", final="1"),
    # Image Acquisition Results
    Rule("Modality", "1", NOT_ALLOWED),
    Rule("StudyID", "2", NOT_ALLOWED),
    Rule("PerformedProtocolCodeSequence", "2", "3"),
    # Note 2: the sequence may not be empty when the step is set COMPLETED or DISCONTINUED.
    Rule("PerformedSeriesSequence", "2", "3", final="1", item=_PERFORMED_SERIES_ITEM),
)

# Not rows of Table F.7.2-1: the instance's identity travels in the command (Affected / Requested
# SOP Instance UID, PS3.7 10.1.2 and 10.1.3), so a Modification List may not change it.
_IDENTITY_TAGS = (0x00080016, 0x00080018)  # SOP Class UID, SOP Instance UID
_STATUS_TAG = 0x00400252
_CHARACTER_SET_TAG = 0x00080005


@dataclass
class _Findings:
    missing: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)

    def raise_first(self) -> None:
        # A response has one status: absent attributes (0120H) go before empty ones (0121H).
        if self.missing:
            raise MissingAttribute(_comment("Missing", self.missing), self.missing)
        if self.empty:
            raise MissingAttributeValue(_comment("No value for", self.empty), self.empty)


def check_create(attributes: Dataset) -> None:
    """Check an N-CREATE Attribute List against Table F.7.2-1 (N-CREATE column)."""
    findings = _Findings()
    _check(attributes, TABLE_F_7_2_1, "n_create", findings)
    findings.raise_first()
    # F.7.2.1.3: "The SCP shall accept N-CREATE request primitives only if the value of the
    # Attribute Performed Procedure Step Status (0040,0252) is IN PROGRESS" -- else 0106H.
    if _text(attributes[_STATUS_TAG]) != IN_PROGRESS:
        raise InvalidAttributeValue(
            "PerformedProcedureStepStatus must be IN PROGRESS", [_STATUS_TAG]
        )


def check_set(current_status: str, modification: Dataset, current: Dataset | None = None) -> str:
    """Check an N-SET Modification List on a step in `current_status`; return the new status.

    Pass the stored attributes as `current` so that the final state is judged on the step as it
    will be (F.7.2.2.2: required attributes may have been set by an earlier N-SET); without it,
    the Modification List alone must carry them.
    """
    # F.7.2.2.3: N-SET is accepted only while the stored status is IN PROGRESS; otherwise
    # Processing failure 0110H with the Error Comment / Error ID of Table F.7.2-2.
    if current_status.strip() != IN_PROGRESS:
        raise StepNoLongerUpdatable()
    refused = [tag for tag in _not_settable_tags() if tag in modification]
    if refused:
        raise NoSuchAttribute(_comment("Not settable by N-SET:", refused), refused)
    findings = _Findings()
    _check(modification, TABLE_F_7_2_1, "n_set", findings)
    findings.raise_first()
    new_status = _new_status(current_status.strip(), modification)
    if new_status in FINAL_STATUSES:
        _check_final_state(
            apply_set(current, modification) if current is not None else modification
        )
    return new_status


def apply_set(current: Dataset, modification: Dataset) -> Dataset:
    """A copy of `current` with each attribute of `modification` replacing the stored one.

    An attribute sent with no value is kept with no value (a cleared Type 2 or 3 attribute).
    F.7.2.2.3: the N-SET Specific Character Set does not replace the stored one; both are decoded
    and the result carries a character set that encodes the values of both.
    """
    updated = copy.deepcopy(current)
    changes = copy.deepcopy(modification)
    _as_text(updated)
    _as_text(changes)
    for element in changes:
        if element.tag != _CHARACTER_SET_TAG:
            updated[element.tag] = element
    character_set = _combined_character_set(current, modification)
    if character_set is not None:
        updated.SpecificCharacterSet = character_set
    return updated


def _as_text(dataset: Dataset) -> None:
    """Turn every element still encoded (as read from the wire) into text, in the data set's
    own character set, so that the character set can then change; text stays as it is.

    Not Dataset.decode: on a data set from the index (DICOM JSON, text already) it re-encodes
    each PersonName in the default repertoire and decodes those bytes in the step's character
    set ("M\ufffdller" for "Müller" under ISO_IR 192).
    """
    for element in dataset:  # pydicom converts a raw element in its data set's character set
        if element.VR == "SQ":
            for item in element.value:
                _as_text(item)


def _not_settable_tags() -> Iterator[int]:
    yield from (rule.tag for rule in TABLE_F_7_2_1 if rule.n_set is NOT_ALLOWED)
    yield from _IDENTITY_TAGS


def _new_status(current_status: str, modification: Dataset) -> str:
    if _STATUS_TAG not in modification:
        return current_status
    new_status = _text(modification[_STATUS_TAG])
    if not new_status:
        # Table F.7.2-1: 3/1 -- the SCU may leave it out, but the step always has a status.
        raise MissingAttributeValue("No value for PerformedProcedureStepStatus", [_STATUS_TAG])
    if new_status not in STATUSES:
        raise InvalidAttributeValue(
            f"Unknown PerformedProcedureStepStatus {new_status}", [_STATUS_TAG]
        )
    return new_status


def _check_final_state(step: Dataset) -> None:
    """F.7.2.2.2: at COMPLETED or DISCONTINUED the Final State column of Table F.7.2-1 holds."""
    findings = _Findings()
    for rule in TABLE_F_7_2_1:
        if rule.final is not None:
            _check_rule(step, rule, rule.final, "n_set", findings)
    findings.raise_first()


def _check(
    dataset: Dataset, rules: Iterable[Rule], column: Literal["n_create", "n_set"], found: _Findings
) -> None:
    for rule in rules:
        requirement = getattr(rule, column)
        if requirement is not None:
            _check_rule(dataset, rule, requirement, column, found)


def _check_rule(
    dataset: Dataset,
    rule: Rule,
    requirement: Requirement,
    column: Literal["n_create", "n_set"],
    found: _Findings,
) -> None:
    """PS3.5 7.4: Type 1 present with a value; then the items.

    An absent Type 2 attribute is tolerated: the step is still usable, modalities differ in
    which empty attributes they bother to send, and refusing the step would lose the report of
    a procedure that did happen.
    """
    if rule.tag not in dataset:
        if requirement == "1":
            found.missing.append(rule.tag)
        return
    element = dataset[rule.tag]
    if requirement == "1" and not _has_value(element):
        found.empty.append(rule.tag)
    if rule.item and element.VR == "SQ":
        for item in element.value:
            _check(item, rule.item, column, found)


def _has_value(element: DataElement) -> bool:
    if element.VR == "SQ":
        return len(element.value) > 0
    if element.is_empty:
        return False
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    return any(str(value).strip() for value in values)


def _text(element: DataElement) -> str:
    return "" if element.is_empty else str(element.value).strip()


def _comment(prefix: str, tags: list[int]) -> str:
    return f"{prefix} {', '.join(keyword_for_tag(tag) or f'{tag:08X}' for tag in tags)}"


def _fit(comment: str) -> str:
    if len(comment) <= ERROR_COMMENT_LIMIT:
        return comment
    return comment[: ERROR_COMMENT_LIMIT - 3] + "..."


def _character_sets(dataset: Dataset) -> tuple[str, ...]:
    value = dataset.get("SpecificCharacterSet")
    values = value if isinstance(value, MultiValue | list) else [value]
    return tuple(str(v).strip() for v in values if v and str(v).strip())


def _combined_character_set(current: Dataset, modification: Dataset) -> str | None:
    """None keeps the stored value; otherwise the one value that encodes both data sets."""
    stored, sent = _character_sets(current), _character_sets(modification)
    if not sent or sent == stored or sent == (DEFAULT_CHARACTER_SET,):
        return None
    if not stored or stored == (DEFAULT_CHARACTER_SET,):
        return sent[0] if len(sent) == 1 else UNICODE_CHARACTER_SET
    return UNICODE_CHARACTER_SET
