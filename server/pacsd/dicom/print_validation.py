"""The checks of the N-CREATE and N-SET attribute lists of the Film Session, Film Box and Image
Box (PS3.4 H.4.1 to H.4.3): pure functions, no I/O.

A request the rules refuse raises `PrintRefused`; warnings are returned beside the values. How
the rules read the standard:
- an attribute of the operation's table that arrives empty is taken as absent (the SCU's "U");
  a mandatory one ("M") absent answers 0x0120 Missing Attribute, empty 0x0121 Missing Attribute
  Value;
- an attribute outside the operation's table, or one pacsd does not support (Smoothing Type,
  Annotation Display Format ID: PS3.4 H.2.4 lets an SCP leave "U/U" attributes out), answers
  0x0105 No Such Attribute with its tag (as DCMTK's dcmprscp does);
- a value outside the enumerated or defined terms pacsd honours, or one that does not decode in
  its VR, answers 0x0106 Invalid Attribute Value with its tag (PS3.4 H.4.1.2.1.2 names 0x0106
  for a Memory Allocation that cannot be provided; pacsd supports none, so that one is the
  warning 0xB600 instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacsd.dicom.print_attributes import (
    COLOR_IMAGE_SEQUENCE,
    DECIMATE_CROP,
    DENSITY_OUT_OF_RANGE,
    FILM_ORIENTATIONS,
    FILM_SESSION,
    FILM_SIZES_MM,
    GRAYSCALE_IMAGE_SEQUENCE,
    IMAGE_BOX_POSITION,
    IMAGE_DISPLAY_FORMAT,
    INVALID_ATTRIBUTE_VALUE,
    MAGNIFICATION_TYPES,
    MAX_DENSITY_VALUE,
    MEDIUM_TYPES,
    MEMORY_ALLOCATION_NOT_SUPPORTED,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    NO_SUCH_ATTRIBUTE,
    POLARITIES,
    PRESENTATION_LUT,
    PRINT_PRIORITIES,
    REFERENCED_FILM_SESSION,
    RESOLUTION_IDS,
    YES_NO,
    FilmBoxAttributes,
    FilmSessionAttributes,
    ImageBoxAttributes,
    PrinterProfile,
    PrintRefused,
    name_of,
)

_BIN = re.compile(r"^BIN_[1-9][0-9]*$")  # C.13.1: BIN_i, no leading zeros
_DENSITY_TERMS = ("BLACK", "WHITE")
_SPECIFIC_CHARACTER_SET = 0x00080005


Parser = Callable[[DataElement], Any]


def _text(element: DataElement) -> str:
    return str(element.value).strip()


def _one_of(values: Iterable[str]) -> Parser:
    allowed = tuple(values)

    def parse(element: DataElement) -> str:
        value = _text(element)
        if value not in allowed:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                f"{name_of(element.tag)} {value!r} is not one of {', '.join(allowed)}",
                [element.tag],
            )
        return value

    return parse


def _integer(low: int, high: int) -> Parser:
    def parse(element: DataElement) -> int:
        try:
            value = int(str(element.value).strip())
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                f"{name_of(element.tag)} {element.value!r} is not an integer {low}..{high}",
                [element.tag],
            )
        return value

    return parse


def _positive_decimal(element: DataElement) -> float:
    try:
        value = float(str(element.value).strip())
    except ValueError:
        value = 0.0
    if not 0 < value < 10_000:  # mm
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"{name_of(element.tag)} must be > 0 mm", [element.tag]
        )
    return value


def _density(element: DataElement) -> str:
    """C.13.3 Border / Empty Image Density: BLACK, WHITE, or hundredths of OD."""
    value = _text(element)
    if value in _DENSITY_TERMS or (value.isdigit() and int(value) <= MAX_DENSITY_VALUE):
        return value
    raise PrintRefused(
        INVALID_ATTRIBUTE_VALUE,
        f"{name_of(element.tag)} {value!r} is not BLACK, WHITE or hundredths of OD",
        [element.tag],
    )


def _film_destination(element: DataElement) -> str:
    value = _text(element)
    if value in ("MAGAZINE", "PROCESSOR") or _BIN.match(value):
        return value
    raise PrintRefused(
        INVALID_ATTRIBUTE_VALUE,
        f"FilmDestination {value!r} is not MAGAZINE, PROCESSOR or BIN_i",
        [element.tag],
    )


def _no_configuration(element: DataElement) -> str:
    """Configuration Information: its values are the Conformance Statement's; pacsd has none."""
    raise PrintRefused(
        INVALID_ATTRIBUTE_VALUE,
        "pacsd defines no ConfigurationInformation values",
        [element.tag],
    )


def _not_supported(element: DataElement) -> str:
    raise PrintRefused(NO_SUCH_ATTRIBUTE, f"{name_of(element.tag)} is not supported", [element.tag])


def _presentation_lut_reference(element: DataElement) -> str:
    """A Referenced Presentation LUT Sequence: one item naming a Presentation LUT instance."""
    items = list(element.value or [])
    if len(items) != 1:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            "ReferencedPresentationLUTSequence needs exactly one item",
            [element.tag],
        )
    sop_class = str(items[0].get("ReferencedSOPClassUID", "") or "")
    uid = str(items[0].get("ReferencedSOPInstanceUID", "") or "")
    if sop_class != PRESENTATION_LUT or not uid:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            "ReferencedPresentationLUTSequence must name a Presentation LUT instance",
            [element.tag],
        )
    return uid


def _empty(element: DataElement) -> bool:
    value = element.value
    return value is None or value == "" or value == b"" or element.VM == 0


def changes(
    attributes: Dataset, fields: Mapping[int, tuple[str, Parser]], what: str
) -> dict[str, Any]:
    """The values of `attributes` by field name, each checked by its parser.

    Tags outside `fields` answer 0x0105 (all of them in one Attribute Identifier List); empty
    values count as absent. Group lengths and Specific Character Set are accepted and ignored.
    """
    unknown = [
        int(element.tag)
        for element in attributes
        if element.tag not in fields
        and element.tag.element != 0
        and element.tag != _SPECIFIC_CHARACTER_SET
    ]
    if unknown:
        names = ", ".join(name_of(tag) for tag in unknown[:3])
        raise PrintRefused(NO_SUCH_ATTRIBUTE, f"{what}: no such attribute {names}", unknown)
    found: dict[str, Any] = {}
    for tag, (name, parse) in fields.items():
        if tag in attributes:
            element = _element(attributes, tag)
            if not _empty(element):
                found[name] = parse(element)
    return found


def _element(attributes: Dataset, tag: int) -> DataElement:
    """The element `tag`, decoded (0x0106 when its value does not decode in its VR)."""
    try:
        return attributes[tag]
    except (ValueError, TypeError, OverflowError) as exc:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"{name_of(tag)} does not decode: {exc}", [tag]
        ) from None


def required(attributes: Dataset, tag: int, what: str) -> DataElement:
    """A mandatory attribute: 0x0120 when absent, 0x0121 when empty."""
    if tag not in attributes:
        raise PrintRefused(MISSING_ATTRIBUTE, f"{what}: {name_of(tag)} missing", [tag])
    element = _element(attributes, tag)
    if _empty(element):
        raise PrintRefused(MISSING_ATTRIBUTE_VALUE, f"{what}: {name_of(tag)} empty", [tag])
    return element


_FILM_SESSION_FIELDS: dict[int, tuple[str, Parser]] = {
    0x20000010: ("number_of_copies", _integer(1, 999)),
    0x20000020: ("print_priority", _one_of(PRINT_PRIORITIES)),
    0x20000030: ("medium_type", _one_of(MEDIUM_TYPES)),
    0x20000040: ("film_destination", _film_destination),
    0x20000050: ("film_session_label", _text),
    0x20000060: ("memory_allocation", _integer(0, 2**31 - 1)),
    0x21000160: ("owner_id", _text),
}


def film_session(
    attributes: Dataset, current: FilmSessionAttributes
) -> tuple[FilmSessionAttributes, int]:
    """N-CREATE / N-SET of a Basic Film Session (PS3.4 H.4.1.2.1.1, H.4.1.2.2.1): the
    attributes in force and the status (0xB600 when a Memory Allocation was asked for: pacsd
    allocates none)."""
    found = changes(attributes, _FILM_SESSION_FIELDS, "Basic Film Session")
    status = MEMORY_ALLOCATION_NOT_SUPPORTED if found.pop("memory_allocation", None) else 0
    return replace(current, **found), status


_FILM_BOX_SET_FIELDS: dict[int, tuple[str, Parser]] = {
    0x20100060: ("magnification_type", _one_of(MAGNIFICATION_TYPES)),
    0x20100080: ("smoothing_type", _not_supported),
    0x20100100: ("border_density", _density),
    0x20100110: ("empty_image_density", _density),
    0x20100120: ("min_density", _integer(0, MAX_DENSITY_VALUE)),
    0x20100130: ("max_density", _integer(0, MAX_DENSITY_VALUE)),
    0x20100140: ("trim", _one_of(YES_NO)),
    0x20100150: ("configuration_information", _no_configuration),
    0x20500500: ("presentation_lut_uid", _presentation_lut_reference),
    0x2010015E: ("illumination", _integer(0, 65535)),
    0x20100160: ("reflected_ambient_light", _integer(0, 65535)),
}
_FILM_BOX_CREATE_FIELDS: dict[int, tuple[str, Parser]] = {
    **_FILM_BOX_SET_FIELDS,
    IMAGE_DISPLAY_FORMAT: ("image_display_format", _text),
    REFERENCED_FILM_SESSION: ("referenced_film_session", lambda element: element.value),
    0x20100030: ("annotation_display_format_id", _not_supported),
    0x20100040: ("film_orientation", _one_of(FILM_ORIENTATIONS)),
    0x20100050: ("film_size_id", _one_of(FILM_SIZES_MM)),
    0x20200050: ("requested_resolution_id", _one_of(RESOLUTION_IDS)),
}


def film_box_create(attributes: Dataset, defaults: FilmBoxAttributes) -> FilmBoxAttributes:
    """N-CREATE of a Basic Film Box (PS3.4 H.4.2.2.1.1). The Referenced Film Session Sequence
    and the densities are the caller's to check against the session and the printer."""
    required(attributes, IMAGE_DISPLAY_FORMAT, "Basic Film Box")
    required(attributes, REFERENCED_FILM_SESSION, "Basic Film Box")
    found = changes(attributes, _FILM_BOX_CREATE_FIELDS, "Basic Film Box")
    found.pop("referenced_film_session")
    return replace(defaults, **found)


def film_box_set(attributes: Dataset, current: FilmBoxAttributes) -> FilmBoxAttributes:
    """N-SET of a Basic Film Box (PS3.4 H.4.2.2.2.1): the format, film and resolution are the
    N-CREATE's alone (0x0105 here)."""
    return replace(current, **changes(attributes, _FILM_BOX_SET_FIELDS, "Basic Film Box N-SET"))


def referenced_film_session(attributes: Dataset) -> str:
    """The Film Session UID an N-CREATE of a Film Box names (0x0106 unless one proper item)."""
    items = list(attributes[REFERENCED_FILM_SESSION].value or [])
    if len(items) == 1 and str(items[0].get("ReferencedSOPClassUID", "")) == FILM_SESSION:
        uid = str(items[0].get("ReferencedSOPInstanceUID", "") or "")
        if uid:
            return uid
    raise PrintRefused(
        INVALID_ATTRIBUTE_VALUE,
        "ReferencedFilmSessionSequence must name the Basic Film Session in one item",
        [REFERENCED_FILM_SESSION],
    )


_IMAGE_BOX_FIELDS: dict[int, tuple[str, Parser]] = {
    IMAGE_BOX_POSITION: ("position", _integer(1, 65535)),
    0x20200020: ("polarity", _one_of(POLARITIES)),
    0x20100060: ("magnification_type", _one_of(MAGNIFICATION_TYPES)),
    0x20100080: ("smoothing_type", _not_supported),
    0x20100150: ("configuration_information", _no_configuration),
    0x20200030: ("requested_image_size", _positive_decimal),
    0x20200040: ("decimate_crop", _one_of(DECIMATE_CROP)),
    0x213000C0: ("original_image", lambda element: None),  # Table H.4-11: accepted, unused
}
_GRAYSCALE_ONLY: dict[int, tuple[str, Parser]] = {
    0x20100120: ("min_density", _integer(0, MAX_DENSITY_VALUE)),
    0x20100130: ("max_density", _integer(0, MAX_DENSITY_VALUE)),
    0x20500500: ("presentation_lut_uid", _presentation_lut_reference),
}


def image_box_set(
    attributes: Dataset, current: ImageBoxAttributes, color: bool
) -> tuple[ImageBoxAttributes, int, Dataset]:
    """N-SET of a Basic Grayscale (Table H.4-10) or Color (Table H.4-11) Image Box: the
    attributes in force, the Image Box Position sent, and the image sequence's one item."""
    sequence_tag = COLOR_IMAGE_SEQUENCE if color else GRAYSCALE_IMAGE_SEQUENCE
    what = "Basic Color Image Box" if color else "Basic Grayscale Image Box"
    fields = {**_IMAGE_BOX_FIELDS, **({} if color else _GRAYSCALE_ONLY)}
    fields[sequence_tag] = ("image", lambda element: element.value)
    position = required(attributes, IMAGE_BOX_POSITION, what)
    sequence = required(attributes, sequence_tag, what)
    found = changes(attributes, fields, what)
    items = list(sequence.value)
    if len(items) != 1:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"{name_of(sequence_tag)} needs one item", [sequence_tag]
        )
    for name in ("position", "image", "smoothing_type", "configuration_information"):
        found.pop(name, None)
    found.pop("original_image", None)
    return replace(current, **found), int(position.value), items[0]


def check_densities(
    min_density: int, max_density: int, profile: PrinterProfile
) -> tuple[int, int, int]:
    """Min and Max Density within the printer's range (C.13.3: "if lower than the minimum printer
    density, Min Density is set to the minimum printer density"): 0xB605 when changed; 0x0106
    when Min is not below Max."""
    if min_density >= max_density:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            f"MinDensity {min_density} is not below MaxDensity {max_density}",
            [0x20100120, 0x20100130],
        )
    low = max(min_density, profile.min_density)
    high = min(max_density, profile.max_density)
    status = DENSITY_OUT_OF_RANGE if (low, high) != (min_density, max_density) else 0
    if low >= high:  # both beyond the same end of the range: the printer's own range
        low, high = profile.min_density, profile.max_density
    return low, high, status
