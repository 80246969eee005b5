"""A generated Modality Worklist: items as a RIS would send them, and their expected matches.

Each PLAN row is one scheduled step; `items()` builds the DICOM items (one with two steps, to
check that pacsd splits it), `write_json`/`write_dicom` the files `pacsd worklist add` reads.
Tests compute expected results from PLAN with plain Python, never with pacsd's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.datagen import TEST_UID_ROOT

# Modality Worklist Information Model - FIND has no storage SOP class; a file needs one.
_FILE_SOP_CLASS = "1.2.840.10008.5.1.4.31"


@dataclass(frozen=True)
class Step:
    """One scheduled procedure step of the plan."""

    patient_id: str
    patient_name: str
    accession: str
    procedure_id: str
    step_id: str
    station: str
    modality: str
    date: str
    time: str
    charset: str = ""


PLAN = (
    Step("W-1", "Doe^Jane", "WACC-1", "RP-1", "SPS-1", "CT01", "CT", "20261130", "080000"),
    Step("W-1", "Doe^Jane", "WACC-1", "RP-1", "SPS-2", "CT01", "CT", "20261130", "093000"),
    Step("W-2", "Smith^John", "WACC-2", "RP-2", "SPS-1", "MR01", "MR", "20261130", "101500"),
    Step("W-3", "Doe^John", "WACC-3", "RP-3", "SPS-1", "CT02", "CT", "20261201", "070000"),
    Step("W-4", "Müller^Jürgen", "WACC-4", "RP-4", "SPS-1", "MR01", "MR", "20261201", "230000",
         "ISO_IR 192"),
    Step("W-5", "Brown^Amy", "WACC-5", "RP-5", "SPS-1", "US01", "US", "20261202", "120000"),
)  # fmt: skip
# PLAN[0] and PLAN[1] are one item with two steps.
TWO_STEP_ITEM = (0, 1)


def _item(step: Step) -> Dataset:
    ds = Dataset()
    if step.charset:
        ds.SpecificCharacterSet = step.charset
    ds.PatientName = step.patient_name
    ds.PatientID = step.patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.AccessionNumber = step.accession
    ds.RequestedProcedureID = step.procedure_id
    ds.RequestedProcedureDescription = f"Procedure {step.procedure_id}"
    ds.StudyInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.ScheduledProcedureStepSequence = Sequence([_step(step)])
    return ds


def _step(step: Step) -> Dataset:
    sps = Dataset()
    sps.ScheduledStationAETitle = step.station
    sps.ScheduledProcedureStepStartDate = step.date
    sps.ScheduledProcedureStepStartTime = step.time
    sps.Modality = step.modality
    sps.ScheduledProcedureStepID = step.step_id
    sps.ScheduledProcedureStepDescription = f"Step {step.step_id} of {step.procedure_id}"
    sps.ScheduledPerformingPhysicianName = "Tech^Tom"
    return sps


def items() -> list[Dataset]:
    """The RIS items: PLAN[0] and PLAN[1] share one item; every other step has its own."""
    first = _item(PLAN[0])
    first.ScheduledProcedureStepSequence.append(_step(PLAN[1]))
    return [first, *(_item(step) for step in PLAN[2:])]


def write_json(items_: list[Dataset], path: Path) -> Path:
    """The items as a DICOM JSON array (PS3.18 F.2)."""
    path.write_text(json.dumps([item.to_json_dict() for item in items_]), encoding="utf-8")
    return path


def write_dicom(item: Dataset, path: Path) -> Path:
    """One item as a DICOM file."""
    item = item.copy()
    item.SOPClassUID = _FILE_SOP_CLASS
    item.SOPInstanceUID = generate_uid(TEST_UID_ROOT)
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    item.file_meta.MediaStorageSOPClassUID = _FILE_SOP_CLASS
    item.file_meta.MediaStorageSOPInstanceUID = item.SOPInstanceUID
    item.save_as(path, enforce_file_format=True)
    return path
