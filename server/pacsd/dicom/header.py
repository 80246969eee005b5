"""An instance's header: parsed without bulk data, turned into index attributes and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

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


def header_json(dataset: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of the header, bulk data left out.

    Element by element, as pydicom's `Dataset.to_json_dict(suppress_invalid_tags=True)` does
    (an element whose value cannot be serialized is left out), without first copying the
    non-bulk elements into a new Dataset.
    """
    document: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (a Dataset is not a dict)
        if _is_bulk(dataset.get_item(tag, keep_deferred=True)):
            continue
        try:
            element = dataset[tag]
            if element.VR == "SQ":
                items = [header_json(item) for item in element.value]
                document[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
            else:
                document[f"{tag:08X}"] = element.to_json_dict(None, BULK_DATA_THRESHOLD)
        except Exception:  # noqa: S112 (as pydicom's suppress_invalid_tags)
            continue
    return document


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


def _integer(dataset: Dataset, keyword: str) -> int | None:
    text = index_text(dataset, keyword).split("\\")[0]
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


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


def extract_attributes(dataset: Dataset) -> InstanceAttributes:
    """Index attributes of `dataset`; the four identifying UIDs must be present."""
    for keyword in _REQUIRED_UIDS:
        if not index_text(dataset, keyword):
            raise DatasetMismatch(f"data set has no {keyword}")
    return InstanceAttributes(
        patient_id=index_text(dataset, "PatientID"),
        issuer_of_patient_id=index_text(dataset, "IssuerOfPatientID"),
        patient_name=index_text(dataset, "PatientName"),
        patient_birth_date=index_text(dataset, "PatientBirthDate"),
        patient_sex=index_text(dataset, "PatientSex"),
        study_instance_uid=index_text(dataset, "StudyInstanceUID"),
        study_date=index_text(dataset, "StudyDate"),
        study_time=index_text(dataset, "StudyTime"),
        accession_number=index_text(dataset, "AccessionNumber"),
        study_id=index_text(dataset, "StudyID"),
        referring_physician_name=index_text(dataset, "ReferringPhysicianName"),
        study_description=index_text(dataset, "StudyDescription"),
        series_instance_uid=index_text(dataset, "SeriesInstanceUID"),
        modality=index_text(dataset, "Modality"),
        series_number=_integer(dataset, "SeriesNumber"),
        series_description=index_text(dataset, "SeriesDescription"),
        body_part_examined=index_text(dataset, "BodyPartExamined"),
        series_date=index_text(dataset, "SeriesDate"),
        series_time=index_text(dataset, "SeriesTime"),
        sop_instance_uid=index_text(dataset, "SOPInstanceUID"),
        sop_class_uid=index_text(dataset, "SOPClassUID"),
        instance_number=_integer(dataset, "InstanceNumber"),
    )
