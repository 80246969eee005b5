"""A small generated archive for the Query/Retrieve tests: several patients, studies and series.

Every instance is also kept as a plain `Entry`, so that tests compute the expected result of a
query with their own few lines of Python over these entries, independently of pacsd's matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from tests.datagen import TEST_UID_ROOT, write_part10


@dataclass(frozen=True)
class Entry:
    """One generated instance, by the attributes the tests query on."""

    path: Path
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    series_uid: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    charset: str
    procedure_codes: tuple[str, ...]


# (date, time, accession, [(modality, instances per series)], procedure codes)
StudyPlan = tuple[str, str, str, list[tuple[str, int]], tuple[str, ...]]
# (patient id, name, character set, studies)
PLAN: list[tuple[str, str, str, list[StudyPlan]]] = [
    ("PID-1", "Doe^Jane", "ISO_IR 100", [
        ("20240101", "090000", "ACC-101", [("CT", 3), ("MR", 1)], ("CT-CHEST",)),
        ("20240315", "173000", "ACC-102", [("CT", 2)], ("CT-HEAD", "CT-NECK")),
    ]),
    ("PID-2", "Smith^John", "ISO_IR 100", [
        ("20240102", "101500", "ACC-201", [("MR", 2)], ("MR-KNEE",)),
    ]),
    ("PID-3", "Müller^Jürgen", "ISO_IR 100", [
        ("20240103", "080000", "ACC-301", [("CT", 1)], ()),
    ]),
    ("PID-4", "Müller^Anna", "ISO_IR 192", [
        ("20240104", "235959", "ACC-401", [("MR", 1)], ()),
    ]),
    ("PID-5", "doe^john", "ISO_IR 100", [
        ("20231231", "120000", "ACC-501", [("CT", 1)], ("CT-CHEST",)),
    ]),
]  # fmt: skip


def _dataset(
    patient: tuple[str, str, str], study: dict[str, str], modality: str, number: int
) -> Dataset:
    patient_id, name, charset = patient
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.PatientID, ds.PatientName = patient_id, name
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study["uid"], study["series"]
    ds.StudyDate, ds.StudyTime = study["date"], study["time"]
    ds.AccessionNumber, ds.StudyID = study["accession"], "1"
    ds.ReferringPhysicianName, ds.StudyDescription = "Ref^Doc", f"Study {study['accession']}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, int(study["number"]), number
    ds.SeriesDescription = f"{modality} series"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(128))
    return ds


def _with_codes(ds: Dataset, codes: tuple[str, ...]) -> Dataset:
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "99PACSD", code
        items.append(item)
    if items:
        ds.ProcedureCodeSequence = Sequence(items)
    return ds


def build(folder: Path) -> list[Entry]:
    """Write the archive's Part 10 files under `folder`; one Entry per file."""
    entries: list[Entry] = []
    for patient_id, name, charset, studies in PLAN:
        for date, time, accession, series_plan, codes in studies:
            study = {"uid": generate_uid(TEST_UID_ROOT), "date": date, "time": time}
            study["accession"] = accession
            for series_number, (modality, count) in enumerate(series_plan, start=1):
                study["series"], study["number"] = generate_uid(TEST_UID_ROOT), str(series_number)
                for number in range(1, count + 1):
                    ds = _with_codes(
                        _dataset((patient_id, name, charset), study, modality, number), codes
                    )
                    path = write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm")
                    entries.append(
                        Entry(
                            path,
                            patient_id,
                            name,
                            study["uid"],
                            date,
                            time,
                            accession,
                            study["series"],
                            modality,
                            str(ds.SOPClassUID),
                            str(ds.SOPInstanceUID),
                            charset,
                            codes,
                        )
                    )
    return entries
