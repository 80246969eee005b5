"""An instance's header: parsed without bulk data, turned into index attributes and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from pacsd.dicom.fastjson import element_json, text_codec
from pacsd.dicom.part10 import DatasetStream
from pacsd.errors import CannotUnderstand, DatasetMismatch

# Values larger than this are never read while parsing the header (pydicom defers them).
DEFER_SIZE = 64 * 1024
# Binary values larger than this are bulk data and stay out of the JSON header.
BULK_DATA_THRESHOLD = 1024
# Index columns hold at most this many characters; the JSON header keeps the full value.
INDEX_TEXT_LIMIT = 256
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_UNKNOWN = "?"  # header_json's codec argument when there is no enclosing data set


def _stop_at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_header(source: DatasetStream) -> Dataset:
    """Parse every element before the pixel data, leaving values over DEFER_SIZE unread."""
    source.stream.seek(source.start)
    try:
        return read_dataset(
            source.stream,
            is_implicit_VR=not source.explicit_vr,
            is_little_endian=source.little_endian,
            bytelength=source.end - source.start,
            stop_when=_stop_at_pixel_data,
            defer_size=DEFER_SIZE,
        )
    except (ValueError, TypeError, KeyError, OSError, NotImplementedError) as exc:
        raise CannotUnderstand(f"data set cannot be parsed: {exc}"[:64]) from None


def _is_bulk(element: DataElement | RawDataElement) -> bool:
    if int(element.tag) in _PIXEL_TAGS:
        return True
    if isinstance(element, RawDataElement):
        if element.value is None and element.length:  # deferred: larger than DEFER_SIZE
            return True
        return element.VR in _BINARY_VRS and element.length > BULK_DATA_THRESHOLD
    value = element.value
    return (
        element.VR in _BINARY_VRS and isinstance(value, bytes) and len(value) > BULK_DATA_THRESHOLD
    )


def header_json(dataset: Dataset, codec: str | None = _UNKNOWN) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of the header, bulk data left out.

    Element by element, as pydicom's `Dataset.to_json_dict(suppress_invalid_tags=True)` does
    (an element whose value cannot be serialized is left out), without first copying the
    non-bulk elements into a new Dataset. Raw elements of the common VRs are converted by
    dicom/fastjson.py; pydicom converts the rest. `codec`: of the enclosing data set's text.
    """
    codec = _text_codec(dataset, codec)
    document: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (a Dataset is not a dict)
        raw: Any = dataset.get_item(tag, keep_deferred=True)  # raw until converted
        if _is_bulk(raw):
            continue
        if type(raw) is RawDataElement and raw.is_little_endian:
            fast = element_json(raw, codec)
            if fast is not None:
                document[f"{tag:08X}"] = fast
                continue
        try:
            element = dataset[tag]
            if element.VR == "SQ":
                items = [header_json(item, codec) for item in element.value]
                document[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
            else:
                document[f"{tag:08X}"] = element.to_json_dict(None, BULK_DATA_THRESHOLD)
        except Exception:  # noqa: S112 (as pydicom's suppress_invalid_tags)
            continue
    return document


def _text_codec(dataset: Dataset, inherited: str | None) -> str | None:
    """The codec of this data set's text: its own Specific Character Set (0008,0005), else
    its parent's (PS3.5 7.5.3); None: pydicom decodes the text."""
    raw: Any = dataset.get_item(0x00080005, keep_deferred=True)
    if raw is None:
        return text_codec(None) if inherited is _UNKNOWN else inherited
    if type(raw) is RawDataElement and isinstance(raw.value, bytes):
        return text_codec(raw.value)
    return None


def index_text(dataset: Dataset, keyword: str) -> str:
    """A value as index text ('' when absent or unreadable); multiple values joined by '\\'."""
    try:
        value = dataset.get(keyword)
    except (ValueError, TypeError, KeyError):
        return ""
    if value is None:
        return ""
    values = value if isinstance(value, MultiValue | list) else [value]
    return "\\".join(str(v) for v in values).strip()[:INDEX_TEXT_LIMIT]


@dataclass(frozen=True)
class InstanceAttributes:
    """What the index records about one instance, by DICOM keyword."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    referring_physician_name: str
    study_description: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    series_date: str
    series_time: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None


_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_TAGS = {
    keyword: f"{tag_for_keyword(keyword) or 0:08X}"
    for keyword in (
        *_REQUIRED_UIDS,
        "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
        "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
        "StudyDescription", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
        "SeriesDate", "SeriesTime", "InstanceNumber",
    )
}  # fmt: skip


def json_text(document: dict[str, Any], keyword: str) -> str:
    """A top-level value of a JSON header as index text, as `index_text` reads it from the
    data set: '' when absent, multiple values joined by '\\', a person name's components
    joined by '=' (PS3.5 6.2.1), stripped, at most INDEX_TEXT_LIMIT characters."""
    element = document.get(_TAGS[keyword])
    values = element.get("Value") if element else None
    if not values:
        return ""
    if element is not None and element.get("vr") == "PN":
        texts = ["=".join(str(part) for part in _components(value)) for value in values]
    else:
        texts = ["" if value is None else str(value) for value in values]
    return "\\".join(texts).strip()[:INDEX_TEXT_LIMIT]


def _components(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [str(value)]
    parts = [value.get("Alphabetic", "")]
    if "Ideographic" in value or "Phonetic" in value:
        parts.append(value.get("Ideographic", ""))
    if "Phonetic" in value:
        parts.append(value.get("Phonetic", ""))
    return parts


def _json_integer(document: dict[str, Any], keyword: str) -> int | None:
    text = json_text(document, keyword).split("\\")[0]
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def attributes_from_json(document: dict[str, Any]) -> InstanceAttributes:
    """Index attributes of a header already in the DICOM JSON model (`header_json`): each value
    is converted once, for both. The four identifying UIDs must be present."""
    for keyword in _REQUIRED_UIDS:
        if not json_text(document, keyword):
            raise DatasetMismatch(f"data set has no {keyword}")
    text = json_text
    return InstanceAttributes(
        patient_id=text(document, "PatientID"),
        issuer_of_patient_id=text(document, "IssuerOfPatientID"),
        patient_name=text(document, "PatientName"),
        patient_birth_date=text(document, "PatientBirthDate"),
        patient_sex=text(document, "PatientSex"),
        study_instance_uid=text(document, "StudyInstanceUID"),
        study_date=text(document, "StudyDate"),
        study_time=text(document, "StudyTime"),
        accession_number=text(document, "AccessionNumber"),
        study_id=text(document, "StudyID"),
        referring_physician_name=text(document, "ReferringPhysicianName"),
        study_description=text(document, "StudyDescription"),
        series_instance_uid=text(document, "SeriesInstanceUID"),
        modality=text(document, "Modality"),
        series_number=_json_integer(document, "SeriesNumber"),
        series_description=text(document, "SeriesDescription"),
        body_part_examined=text(document, "BodyPartExamined"),
        series_date=text(document, "SeriesDate"),
        series_time=text(document, "SeriesTime"),
        sop_instance_uid=text(document, "SOPInstanceUID"),
        sop_class_uid=text(document, "SOPClassUID"),
        instance_number=_json_integer(document, "InstanceNumber"),
    )
