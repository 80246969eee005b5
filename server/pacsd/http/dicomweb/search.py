"""QIDO-RS query parameters as C-FIND keys (PS3.18 8.3.4, 10.6.1.2): one matching engine.

Each `{attributeID}={value}` becomes the DataElement a C-FIND identifier would hold, parsed by
dicom/matching.py into the same matchers (single value, wild card, range, UID list, fuzzy
person names); `includefield` adds return keys; `limit`, `offset` and `fuzzymatching` are the
query's options. What cannot be understood is a ValueError with a message for the 400 answer.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacsd.dicom.matching import Key, MatchOptions, parse_identifier
from pacsd.dicom.qr_models import Level


def _tags(*keywords: str) -> tuple[int, ...]:
    return tuple(int(Tag(keyword)) for keyword in keywords)


RETRIEVE_URL = int(Tag("RetrieveURL"))
INSTANCE_AVAILABILITY = int(Tag("InstanceAvailability"))
SPECIFIC_CHARACTER_SET = 0x00080005
# PS3.18 Table 6.7.1-2 (was 10.6.3-3): the attributes each level's answer carries by default.
STUDY_ATTRIBUTES = _tags(
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyDescription",
)  # fmt: skip
SERIES_ATTRIBUTES = _tags(
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)  # fmt: skip
INSTANCE_ATTRIBUTES = _tags(
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
    "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip
# includefield=all: the defaults and these, when the stored header has them.
STUDY_EXTRA = _tags(
    "IssuerOfPatientID", "OtherPatientIDs", "PatientAge", "PatientSize", "PatientWeight",
    "SOPClassesInStudy", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
    "ProcedureCodeSequence", "InstitutionName",
)  # fmt: skip
SERIES_EXTRA = _tags(
    "BodyPartExamined", "SeriesDate", "SeriesTime", "ProtocolName", "Laterality",
    "Manufacturer", "ManufacturerModelName", "StationName", "OperatorsName",
    "PerformedProcedureStepDescription", "FrameOfReferenceUID",
)  # fmt: skip
LEVEL_ATTRIBUTES: Mapping[Level, tuple[int, ...]] = {
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: INSTANCE_ATTRIBUTES,
}
OPTIONS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
UID_SEPARATORS = (",", "\\")


@dataclass
class Search:
    """One QIDO-RS query: the C-FIND keys, what else to return, and the paging options."""

    level: Level
    keys: list[Key]
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    include_all: bool = False
    include: list[int] = field(default_factory=list)
    query_text: str = ""  # the query string as received (for the audit record)


def attribute_tag(name: str) -> int:
    """A tag from a keyword or eight hex digits (PS3.18 8.3.4.1 attributeID); ValueError."""
    if "." in name:
        raise ValueError(f"{name}: attributes inside sequences are not supported in queries")
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise ValueError(f"{name!r} is neither a DICOM keyword nor a tag (ggggeeee)")
    return int(tag)


def _vr(tag: int) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _element(tag: int, values: Sequence[str]) -> DataElement:
    """The identifier element a C-FIND SCU would send for these QIDO-RS values."""
    vr = _vr(tag)
    parts: list[str] = []
    for value in values:
        if vr == "UI":  # PS3.18 8.3.4.1: a UID list is comma-separated (backslash accepted)
            for separator in UID_SEPARATORS:
                value = value.replace(separator, "\\")
            parts += [uid.strip() for uid in value.split("\\") if uid.strip()]
        elif vr == "SQ":
            if value:
                raise ValueError(f"{keyword_for_tag(tag) or tag}: a sequence takes no value")
        else:
            parts += value.split("\\")
    if vr == "SQ":
        return DataElement(tag, vr, [])
    if vr in ("US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"):
        try:
            numbers = [float(part) if vr in ("FL", "FD") else int(part) for part in parts]
        except ValueError:
            raise ValueError(f"{keyword_for_tag(tag)}: not a number: {parts!r}") from None
        return DataElement(tag, vr, numbers[0] if len(numbers) == 1 else numbers)
    text = "\\".join(parts)
    return DataElement(tag, vr, text)


def _number(name: str, values: Sequence[str]) -> int:
    if len(values) != 1 or not values[0].strip().isdigit():
        raise ValueError(f"{name} must be one non-negative integer, not {list(values)!r}")
    return int(values[0])


def _boolean(name: str, values: Sequence[str]) -> bool:
    if len(values) != 1 or values[0].lower() not in ("true", "false"):
        raise ValueError(f"{name} must be true or false")
    return values[0].lower() == "true"


def parse_search(
    level: Level,
    parameters: Iterable[tuple[str, str]],
    scope: Mapping[int, str],
    case_insensitive_names: bool,
) -> Search:
    """The Search of a QIDO-RS request at `level`; `scope` holds the UIDs of the path
    (/studies/{uid}/series...). ValueError with the reason when a parameter is wrong."""
    grouped: dict[str, list[str]] = {}
    for name, value in parameters:
        grouped.setdefault(name, []).append(value)
    limit = _number("limit", grouped["limit"]) if "limit" in grouped else None
    offset = _number("offset", grouped["offset"]) if "offset" in grouped else 0
    fuzzy = (
        _boolean("fuzzymatching", grouped["fuzzymatching"]) if "fuzzymatching" in grouped else False
    )
    include_all, include = False, []
    for value in grouped.get("includefield", []):
        for name in (part.strip() for part in value.split(",")):
            if name == "all":
                include_all = True
            elif name:
                include.append(attribute_tag(name))
    identifier = Dataset()
    for name, values in grouped.items():
        if name in OPTIONS:
            continue
        tag = attribute_tag(name)
        if tag in scope:
            raise ValueError(f"{name} is given by the path already")
        identifier.add(_element(tag, values))
    for tag, uid in scope.items():
        identifier.add(DataElement(tag, "UI", uid))
    # PS3.18 8.3.4.6: fuzzymatching=true asks for fuzzy semantic matching of person names;
    # pacsd has it (dicom/matching.PersonNameMatcher), the same as negotiated over DICOM.
    options = MatchOptions(
        person_name_case_insensitive=case_insensitive_names, fuzzy_person_names=fuzzy
    )
    try:
        keys = parse_identifier(identifier, options)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"query cannot be parsed: {exc}") from None
    return Search(level, keys, limit, offset, fuzzy, include_all, include)


def return_keys(search: Search, levels: Sequence[Level]) -> list[Key]:
    """The query's keys, then every attribute to return that is not one of them: the
    defaults of each level in `levels` (PS3.18 Table 6.7.1-2), includefield's, and with
    includefield=all the extra attributes of those levels."""
    keys = list(search.keys)
    seen = {key.tag for key in keys}
    wanted: list[int] = []
    for level in levels:
        wanted += LEVEL_ATTRIBUTES[level]
        if search.include_all:
            wanted += {Level.STUDY: STUDY_EXTRA, Level.SERIES: SERIES_EXTRA}.get(level, ())
    wanted += search.include
    for tag in wanted:
        if tag not in seen:
            seen.add(tag)
            keys.append(Key(tag, _vr(tag)))
    return keys
