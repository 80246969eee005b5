"""Query/Retrieve information models and levels (PS3.4 C.3, C.4.1, C.6, Y.6 and Z.3).

pacsd serves the Patient Root, Study Root and (retired) Patient/Study Only models for FIND,
GET and MOVE, the Composite Instance Root model (IMAGE and FRAME levels) for GET and MOVE, and
the Composite Instance Retrieve Without Bulk Data model (IMAGE level) for GET. An identifier
names its Query/Retrieve Level; the hierarchical rules decide which unique keys it must carry,
and a wrong identifier raises `IdentifierError` (0xA900, PS3.4 C.4.1.1.4 "Identifier does not
match SOP Class").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsd.dicom.matching import element_values
from pacsd.errors import DicomStatusError


class IdentifierError(DicomStatusError):
    """PS3.4 C.4.1.1.4 / C.4.2.1.5: Identifier does not match SOP Class (0xA900)."""

    status = 0xA900


class Level(enum.IntEnum):
    """Query/Retrieve levels, from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3
    FRAME = 4  # Composite Instance Root only (PS3.4 Table Y.6.1-1)


UNIQUE_KEYS: Mapping[Level, int] = {
    Level.PATIENT: int(Tag("PatientID")),
    Level.STUDY: int(Tag("StudyInstanceUID")),
    Level.SERIES: int(Tag("SeriesInstanceUID")),
    Level.IMAGE: int(Tag("SOPInstanceUID")),
}
QUERY_RETRIEVE_LEVEL = int(Tag("QueryRetrieveLevel"))


@dataclass(frozen=True)
class InformationModel:
    """One Q/R information model: its levels, top first."""

    name: str
    levels: tuple[Level, ...]
    bulk_data: bool = True  # False: instances go without their bulk data (PS3.4 Z.1.3)

    def levels_above(self, level: Level) -> tuple[Level, ...]:
        """The model's levels above `level` (Study Root has no patient level)."""
        return tuple(upper for upper in self.levels if upper < level)


PATIENT_ROOT = InformationModel(
    "Patient Root", (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
)
STUDY_ROOT = InformationModel("Study Root", (Level.STUDY, Level.SERIES, Level.IMAGE))
PATIENT_STUDY_ONLY = InformationModel("Patient/Study Only", (Level.PATIENT, Level.STUDY))
# PS3.4 Y.6.1: IMAGE (a Composite Instance by its SOP Instance UID alone) and FRAME.
COMPOSITE_INSTANCE_ROOT = InformationModel("Composite Instance Root", (Level.IMAGE, Level.FRAME))
# PS3.4 Z.3.1: one level, the Composite Instance ("IMAGE", Z.4.2.1.3.1).
WITHOUT_BULK_DATA = InformationModel("Without Bulk Data", (Level.IMAGE,), bulk_data=False)

MODELS: Mapping[str, InformationModel] = {
    # PS3.4 C.6.1, C.6.2 and C.6.3 (retired): FIND, MOVE and GET of each model.
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.1": PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.2": PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.3": PATIENT_STUDY_ONLY,
    # PS3.4 Y.6.1.3: Composite Instance Root Retrieve MOVE and GET; Z.6.1.3: Without Bulk Data GET.
    "1.2.840.10008.5.1.4.1.2.4.2": COMPOSITE_INSTANCE_ROOT,
    "1.2.840.10008.5.1.4.1.2.4.3": COMPOSITE_INSTANCE_ROOT,
    "1.2.840.10008.5.1.4.1.2.5.3": WITHOUT_BULK_DATA,
}


def model_of(sop_class_uid: str) -> InformationModel:
    """The information model of a Q/R SOP class pacsd serves."""
    model = MODELS.get(sop_class_uid)
    if model is None:
        raise IdentifierError(f"SOP class {sop_class_uid} is not a served Q/R model")
    return model


def level_of(identifier: Dataset, model: InformationModel) -> Level:
    """The identifier's Query/Retrieve Level (0008,0052), checked against the model."""
    element = identifier.get(QUERY_RETRIEVE_LEVEL)
    values = element_values(element) if element is not None else []
    if len(values) != 1:
        raise IdentifierError("Query/Retrieve Level missing")
    name = values[0].upper()
    level = Level.__members__.get(name)
    if level is None or level not in model.levels:
        raise IdentifierError(f"level {name[:16]} not in the {model.name} model")
    return level


def unique_values(identifier: Dataset, level: Level) -> list[str]:
    """The values of the level's unique key in the identifier ([] when absent or empty)."""
    tag = UNIQUE_KEYS[level]
    return element_values(identifier[tag]) if tag in identifier else []


def check_find_hierarchy(identifier: Dataset, model: InformationModel, level: Level) -> None:
    """PS3.4 C.4.1.2.1: each level above the query level is given by its unique key, one value."""
    for upper in model.levels_above(level):
        values = unique_values(identifier, upper)
        if len(values) != 1 or any(char in values[0] for char in "*?"):
            raise IdentifierError(f"{_KEYWORDS[upper]} needs one value at {level.name} level")


def retrieve_keys(
    identifier: Dataset, model: InformationModel, level: Level
) -> dict[Level, Sequence[str]]:
    """C-GET/C-MOVE keys (PS3.4 C.4.2.2.1): the level's unique key (a list at that level).

    Unique keys of the levels above are optional here and narrow the selection when present.
    A FRAME level retrieve selects its source instance by SOP Instance UID (PS3.4 Y.4.1.2.1).
    """
    level = Level.IMAGE if level is Level.FRAME else level
    keys: dict[Level, Sequence[str]] = {}
    for upper in (*model.levels_above(level), level):
        values = unique_values(identifier, upper)
        if values:
            keys[upper] = values
    if level not in keys:
        raise IdentifierError(f"{_KEYWORDS[level]} missing for a {level.name} retrieve")
    if any("*" in value or "?" in value for values in keys.values() for value in values):
        raise IdentifierError("retrieve keys take no wild cards")
    return keys


_KEYWORDS: Mapping[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
