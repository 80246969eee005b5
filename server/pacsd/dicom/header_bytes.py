"""An instance's JSON header read straight from its little endian bytes, without pydicom.

pydicom's `read_dataset` makes a RawDataElement and a dict entry of every element and then a
Dataset; for a small instance that costs more than storing it. Here one pass over the bytes
(already checked by dicom/integrity.py) collects each data set's elements, nested sequences
included, and dicom/fastjson.py turns the common VRs into the DICOM JSON model. The result is
exactly what `header_json(read_header(...))` gives (tests/unit/test_header_bytes.py holds the
two to each other over pydicom's test files): the same elements left out as bulk data (pixel
data, values over DEFER_SIZE, binary values over BULK_DATA_THRESHOLD), the reading stopped at
the top level's pixel data, the same value conversions.

What pydicom must decide is left to it: at the top level, the elements fastjson does not
convert (ambiguous or private VRs, another character set) are converted by a Dataset of that
level's raw elements, as before; anything else unusual (big endian, an unknown VR, an undefined
length outside a sequence, such an element inside a sequence item) makes `fast_header_json`
return None, and the caller reads the header with pydicom.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pacsd.dicom.fastjson import dictionary_vr, person_name_json, text_codec, value_json

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
DEFER_SIZE = 64 * 1024  # dicom/header.py's: values larger than this are never read
BULK_DATA_THRESHOLD = 1024  # dicom/header.py's: binary values larger are bulk data
SPECIFIC_CHARACTER_SET = 0x00080005
MAX_DEPTH = 64  # as dicom/integrity.py: each level is a Python frame
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length; the others.
# Keyed by the VR's two bytes read as a little endian 16-bit number.
_LONG_VRS = {
    int.from_bytes(vr.encode(), "little"): vr
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
}
_SHORT_VRS = {
    int.from_bytes(vr.encode(), "little"): vr
    for vr in (
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH",
        "SL", "SS", "ST", "TM", "UI", "UL", "US",
    )
}  # fmt: skip
_TAG = struct.Struct("<HH")
_ITEM_HEADER = struct.Struct("<HHL")
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<L")


class _Unusual(Exception):
    """Something pydicom must decide: the caller parses the header with pydicom."""


# One element of a data set: (tag, VR or None (implicit), length, offset of the value), or a
# sequence: (tag, "SQ", length, its items, each a list of elements).
Element = tuple[int, str | None, int, Any]


def fast_header_json(
    buffer: bytes | memoryview, start: int, end: int, explicit_vr: bool
) -> dict[str, Any] | None:
    """The JSON header of the little endian data set buffer[start:end], or None when pydicom
    must read it (see the module docstring)."""
    with memoryview(buffer) as view:
        reader = _Reader(view, explicit_vr)
        try:
            elements, _ = reader.data_set(start, end, 0, delimited=False)
            return reader.json(elements, None, 0)
        except (_Unusual, struct.error, IndexError):
            return None


class _Reader:
    def __init__(self, buffer: memoryview, explicit_vr: bool) -> None:
        self.buffer = buffer
        self.explicit_vr = explicit_vr

    def value(self, where: int, length: int) -> bytes:
        return bytes(self.buffer[where : where + length])

    def raw(self, tag: int, vr: str | None, length: int, where: int) -> RawDataElement:
        """The element as pydicom's reader would have made it (a little endian one)."""
        value = self.value(where, length)
        return RawDataElement(BaseTag(tag), vr, length, value, where, vr is None, True)

    def data_set(
        self, position: int, end: int, depth: int, delimited: bool
    ) -> tuple[list[Element], int]:
        """The elements from `position` to `end`, or to an Item Delimitation Item; `depth`:
        how deep in sequences (0: the top level)."""
        if depth > MAX_DEPTH:
            raise _Unusual  # dicom/integrity.py refuses it first
        buffer, explicit, top = self.buffer, self.explicit_vr, not depth
        elements: list[Element] = []
        previous = -1
        while position < end:
            group, number = _TAG.unpack_from(buffer, position)
            tag = group << 16 | number
            if tag <= previous and group != 0xFFFE:
                raise _Unusual  # out of order or repeated: pydicom's Dataset keeps the last
            previous = tag
            if group == 0xFFFE:
                if tag == ITEM_DELIMITER and delimited:
                    return elements, position + 8
                raise _Unusual
            if top and tag in _PIXEL_TAGS:
                return elements, end  # read_header stops here
            vr: str | None
            if explicit:
                code = _UINT16.unpack_from(buffer, position + 4)[0]
                vr = _SHORT_VRS.get(code)
                if vr is not None:
                    length = _UINT16.unpack_from(buffer, position + 6)[0]
                    position += 8
                else:
                    vr = _LONG_VRS.get(code)
                    if vr is None:
                        raise _Unusual  # pydicom may take it for implicit VR
                    length = _UINT32.unpack_from(buffer, position + 8)[0]
                    position += 12
            else:
                vr = None
                length = _UINT32.unpack_from(buffer, position + 4)[0]
                position += 8
            if length == UNDEFINED_LENGTH:
                if vr != "SQ" and not (vr is None and dictionary_vr(tag) == "SQ"):
                    raise _Unusual
                items, position = self.sequence(position, end, depth, delimited=True)
                elements.append((tag, "SQ", length, items))
                continue
            if position + length > end:
                raise _Unusual
            elements.append((tag, vr, length, position))
            position += length
        if delimited:
            raise _Unusual  # no Item Delimitation Item
        return elements, position

    def sequence(
        self, position: int, end: int, depth: int, delimited: bool
    ) -> tuple[list[list[Element]], int]:
        """The items of a sequence: to its Sequence Delimitation Item, or to `end`."""
        buffer = self.buffer
        items: list[list[Element]] = []
        while position < end:
            group, number, length = _ITEM_HEADER.unpack_from(buffer, position)
            tag = group << 16 | number
            position += 8
            if tag == SEQUENCE_DELIMITER and delimited:
                return items, position
            if tag != ITEM:
                raise _Unusual
            if length == UNDEFINED_LENGTH:
                elements, position = self.data_set(position, end, depth + 1, delimited=True)
            else:
                if position + length > end:
                    raise _Unusual
                elements, _ = self.data_set(position, position + length, depth + 1, False)
                position += length
            items.append(elements)
        if delimited:
            raise _Unusual  # no Sequence Delimitation Item
        return items, position

    def json(self, elements: list[Element], inherited: str | None, depth: int) -> dict[str, Any]:
        """One data set's JSON; `inherited`: the enclosing data set's text codec."""
        top = not depth
        codec = inherited if not top else text_codec(None)
        for tag, vr, length, where in elements:
            if tag == SPECIFIC_CHARACTER_SET and vr != "SQ":
                codec = text_codec(self.value(where, length))
        document: dict[str, Any] = {}
        pydicoms: list[int] = []
        for tag, vr, length, where in elements:
            if vr == "SQ" and length == UNDEFINED_LENGTH:
                document[f"{tag:08X}"] = self._sequence_json(where, codec, depth)
                continue
            if tag in _PIXEL_TAGS or (length > DEFER_SIZE and tag != SPECIFIC_CHARACTER_SET):
                continue  # pixel data, or a value read_header defers: bulk data
            if vr in _BINARY_VRS and length > BULK_DATA_THRESHOLD:
                continue
            if vr == "SQ" or (vr is None and dictionary_vr(tag) == "SQ"):
                items, _ = self.sequence(where, where + length, depth, delimited=False)
                document[f"{tag:08X}"] = self._sequence_json(items, codec, depth)
                continue
            known = dictionary_vr(tag) if vr is None else (None if vr == "UN" else vr)
            converted = None
            if known is not None:
                value = self.value(where, length)
                converted = value_json(known, value, codec)
                if converted is None and codec is not None and known == "PN":
                    converted = person_name_json(value, codec)
            if converted is not None:
                document[f"{tag:08X}"] = converted
            elif top:
                pydicoms.append(tag)
            else:
                raise _Unusual  # pydicom would convert it in the context of its parents
        if pydicoms:
            self._pydicom_json(elements, pydicoms, document)
        return document

    def _sequence_json(
        self, items: list[list[Element]], codec: str | None, depth: int
    ) -> dict[str, Any]:
        return {"vr": "SQ", "Value": [self.json(item, codec, depth + 1) for item in items]}

    def _pydicom_json(
        self, elements: list[Element], tags: list[int], document: dict[str, Any]
    ) -> None:
        """pydicom converts `tags` in a Dataset of the top level's raw elements (so that it
        finds the character set, the private creators and what decides an ambiguous VR); an
        element it cannot convert is left out, as header_json leaves it out."""
        raws: dict[BaseTag, DataElement | RawDataElement] = {
            BaseTag(tag): self.raw(tag, vr, length, where)
            for tag, vr, length, where in elements
            if vr != "SQ" and length <= DEFER_SIZE
        }
        dataset = Dataset(raws)
        for tag in tags:
            try:
                document[f"{tag:08X}"] = dataset[tag].to_json_dict(None, BULK_DATA_THRESHOLD)
            except Exception:  # noqa: S112 (as header_json)
                continue
