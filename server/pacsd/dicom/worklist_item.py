"""Modality Worklist items as an operator adds them: read, checked, one per scheduled step.

An item comes from a DICOM file, from the DICOM JSON model (PS3.18 F.2: one object or an
array of them), or from the same JSON written with keywords (`{"PatientName": "Doe^Jane",
"ScheduledProcedureStepSequence": [{"Modality": "CT", ...}]}`, examples/worklist-item.json).
PS3.4 K.6.1.2.2 makes the keys below Type 1 in a worklist response, so an item
lacking one is refused with their names; a missing Study Instance UID is generated, as a RIS
would (the modality needs it for the images). An item with several Scheduled Procedure Steps
becomes one worklist item per step, each holding only its own step (K.6.1.2.2: the sequence in
a response holds a single item).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacsd.dicom.header import header_json, index_text
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID

REQUIRED = ("PatientName", "PatientID", "RequestedProcedureID")
REQUIRED_IN_STEP = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledProcedureStepID",
)
# Type 2 keys of K.6.1.2.2 that a response carries even when empty.
PRESENT_IN_STEP = ("ScheduledPerformingPhysicianName",)
PRESENT = ("AccessionNumber", "ReferringPhysicianName", "PatientBirthDate", "PatientSex")


# What an operator is told when a file is none of the accepted forms.
EXPECTED_FORM = (
    "a worklist item file is a DICOM file, DICOM JSON (PS3.18 F.2: "
    '{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}, ...}) or the same with '
    'keywords ({"PatientName": "Doe^Jane", "PatientID": "P1", "RequestedProcedureID": "RP1", '
    '"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": "CT01", '
    '"ScheduledProcedureStepStartDate": "20260115", "ScheduledProcedureStepStartTime": "0930", '
    '"Modality": "CT", "ScheduledProcedureStepID": "SPS1"}]}); an object or an array of them. '
    "See examples/worklist-item.json"
)
_DICOM_JSON_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class WorklistItemError(ValueError):
    """An item that cannot go into the worklist, and why (for the operator)."""


@dataclass(frozen=True)
class WorklistEntry:
    """One scheduled step, ready for the index: matching columns and the whole item."""

    patient_id: str
    patient_name: str
    accession_number: str
    requested_procedure_id: str
    study_instance_uid: str
    scheduled_procedure_step_id: str
    scheduled_station_ae_title: str
    modality: str
    start_date: str
    start_time: str
    document: dict[str, Any]
    generated_study_uid: bool = False


def read_items(path: Path) -> list[Dataset]:
    """The datasets in a DICOM file or a DICOM JSON file (an object or an array)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise WorklistItemError(f"{path}: {exc.strerror or exc}") from None
    if text.lstrip()[:1] in (b"{", b"["):
        return _json_items(path, text)
    try:
        return [dcmread(path)]
    except (InvalidDicomError, OSError, ValueError) as exc:
        problem = f"{path}: neither DICOM JSON nor a DICOM file ({exc}); {EXPECTED_FORM}"
        raise WorklistItemError(problem) from None


def _json_items(path: Path, text: bytes) -> list[Dataset]:
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise WorklistItemError(f"{path}: not valid JSON ({exc}); {EXPECTED_FORM}") from None
    objects = loaded if isinstance(loaded, list) else [loaded]
    items = []
    for number, item in enumerate(objects, start=1):
        where = f"{path}: item {number}" if isinstance(loaded, list) else str(path)
        try:
            items.append(_json_item(item))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise WorklistItemError(f"{where}: {_problem(exc)}; {EXPECTED_FORM}") from None
    return items


def _json_item(item: object) -> Dataset:
    """One JSON object: DICOM JSON when every key is a tag (ggggeeee), else keywords."""
    if not isinstance(item, dict) or not item:
        raise ValueError("not a JSON object of attributes")
    if all(_DICOM_JSON_TAG.match(key) for key in item):
        return Dataset.from_json(item)
    return _keyword_dataset(item)


def _keyword_dataset(item: dict[str, Any]) -> Dataset:
    """A data set from {"Keyword": value}: strings (and numbers) as DICOM would write them,
    lists for several values, lists of objects for sequences."""
    dataset = Dataset()
    for keyword, value in item.items():
        if _DICOM_JSON_TAG.match(keyword):
            raise ValueError(f"{keyword!r} is a tag among keywords: write one form or the other")
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is neither a DICOM keyword nor a tag (ggggeeee)")
        if dictionary_VR(keyword) == "SQ":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ValueError(f"{keyword} is a sequence: a list of objects")
            setattr(dataset, keyword, Sequence([_keyword_dataset(v) for v in value]))
        elif isinstance(value, dict):
            raise ValueError(f"{keyword}: a value, or a list of values, not an object")
        else:
            setattr(dataset, keyword, "" if value is None else value)
    return dataset


def _problem(exc: Exception) -> str:
    """What pydicom's or the checks' exception says, in one line."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def entries_of(item: Dataset) -> Iterator[WorklistEntry]:
    """One checked WorklistEntry per Scheduled Procedure Step of `item`."""
    item = _plain(item)
    missing = [keyword for keyword in REQUIRED if not index_text(item, keyword)]
    steps = list(item.get("ScheduledProcedureStepSequence") or [])
    if not steps:
        missing.append("ScheduledProcedureStepSequence")
    for number, step in enumerate(steps, start=1):
        missing += [
            f"ScheduledProcedureStepSequence[{number}].{keyword}"
            for keyword in REQUIRED_IN_STEP
            if not index_text(step, keyword)
        ]
    if missing:
        raise WorklistItemError(f"missing or empty: {', '.join(missing)}")
    generated = not index_text(item, "StudyInstanceUID")
    if generated:
        item.StudyInstanceUID = generate_uid(f"{IMPLEMENTATION_CLASS_UID}.2.")
    for keyword in PRESENT:
        if keyword not in item:
            setattr(item, keyword, "")
    for step in steps:
        yield _entry(item, step, generated)


def _entry(item: Dataset, step: Dataset, generated: bool) -> WorklistEntry:
    single = _plain(item)
    step = _plain(step)
    for keyword in PRESENT_IN_STEP:
        if keyword not in step:
            setattr(step, keyword, "")
    single.ScheduledProcedureStepSequence = Sequence([step])
    return WorklistEntry(
        patient_id=index_text(item, "PatientID"),
        patient_name=index_text(item, "PatientName"),
        accession_number=index_text(item, "AccessionNumber"),
        requested_procedure_id=index_text(item, "RequestedProcedureID"),
        study_instance_uid=index_text(item, "StudyInstanceUID"),
        scheduled_procedure_step_id=index_text(step, "ScheduledProcedureStepID"),
        scheduled_station_ae_title=index_text(step, "ScheduledStationAETitle")[:16],
        modality=index_text(step, "Modality")[:16],
        start_date=index_text(step, "ScheduledProcedureStepStartDate")[:16],
        start_time=index_text(step, "ScheduledProcedureStepStartTime")[:32],
        document=header_json(single),
        generated_study_uid=generated,
    )


def _plain(dataset: Dataset) -> Dataset:
    """A shallow copy of the elements alone (a DICOM file's meta information is not part of a
    worklist item), so that the caller's data set is left as it was."""
    plain = Dataset()
    plain.update(dataset)
    return plain
