"""Structural check of an encoded data set: every element fits in the bytes that carry it.

pydicom reads a truncated data set without complaint (a value shorter than its declared length,
a missing sequence delimiter), and a receiver that trusts it stores whatever arrived. pacsd
walks the element headers once before storing (PS3.5 7.1 data elements, 7.5 nesting of data
sets, A.4 encapsulated pixel data), seeking past values without reading them, so a 1 GB value
costs one seek.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

from pacsd.errors import CannotUnderstand

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# PS3.5 7.1.2: these explicit VRs have a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Defence against pathological nesting (each level is a Python frame).
MAX_DEPTH = 64


class TruncatedDataset(CannotUnderstand):
    """The data set ends before an element, item or delimiter it declares."""


class _Walker:
    def __init__(self, stream: BinaryIO, explicit_vr: bool, little_endian: bool) -> None:
        self.stream = stream
        self.explicit_vr = explicit_vr
        self.endian = "<" if little_endian else ">"

    def read_exact(self, count: int, end: int, what: str) -> bytes:
        position = self.stream.tell()
        if position + count > end:
            raise TruncatedDataset(f"data set ends inside {what} at byte {position}")
        data = self.stream.read(count)
        if len(data) != count:
            raise TruncatedDataset(f"data set ends inside {what} at byte {position}")
        return data

    def tag_and_length(self, end: int) -> tuple[int, int]:
        group, element, length = struct.unpack(
            self.endian + "HHL", self.read_exact(8, end, "an item header")
        )
        return (group << 16) | element, length

    def elements(self, end: int, depth: int, until_item_delimiter: bool = False) -> None:
        """Walk elements up to `end`, or up to an Item Delimitation Item when asked."""
        if depth > MAX_DEPTH:
            raise CannotUnderstand(f"sequences nested deeper than {MAX_DEPTH} levels")
        while self.stream.tell() < end:
            header = self.read_exact(8, end, "an element header")
            group, element = struct.unpack(self.endian + "HH", header[:4])
            tag = (group << 16) | element
            if tag == ITEM_DELIMITER and until_item_delimiter:
                return
            vr, length = self.vr_and_length(tag, header, end)
            self.value(tag, vr, length, end, depth)
        if until_item_delimiter:
            raise TruncatedDataset("item has no Item Delimitation Item")

    def vr_and_length(self, tag: int, header: bytes, end: int) -> tuple[bytes | None, int]:
        if tag >> 16 == 0xFFFE:  # item tags carry no VR (PS3.5 7.5)
            return None, struct.unpack(self.endian + "L", header[4:])[0]
        if not self.explicit_vr:
            return None, struct.unpack(self.endian + "L", header[4:])[0]
        vr = header[4:6]
        if vr in _LONG_VRS:
            return vr, struct.unpack(self.endian + "L", self.read_exact(4, end, "a length"))[0]
        return vr, struct.unpack(self.endian + "H", header[6:])[0]

    def value(self, tag: int, vr: bytes | None, length: int, end: int, depth: int) -> None:
        if length == UNDEFINED_LENGTH:
            if vr in (b"OB", b"OW") and tag == 0x7FE00010:
                self.fragments(end)  # PS3.5 A.4: encapsulated pixel data
            elif vr in (None, b"SQ"):
                self.sequence_items(end, depth)
            elif vr == b"UN":  # PS3.5 6.2.2: a sequence re-encoded as Implicit VR Little Endian
                _Walker(self.stream, explicit_vr=False, little_endian=True).sequence_items(
                    end, depth
                )
            else:
                raise CannotUnderstand(f"element {tag:08X} ({vr!r}) has undefined length")
            return
        position = self.stream.tell()
        if position + length > end:
            raise TruncatedDataset(
                f"element {tag:08X} declares {length} bytes, {end - position} remain"
            )
        if self.is_sequence(tag, vr):
            self.sequence_items(position + length, depth, defined_end=True)
        self.stream.seek(position + length)

    def is_sequence(self, tag: int, vr: bytes | None) -> bool:
        if vr is not None:
            return vr == b"SQ"
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            return False

    def sequence_items(self, end: int, depth: int, defined_end: bool = False) -> None:
        while not defined_end or self.stream.tell() < end:
            tag, length = self.tag_and_length(end)
            if tag == SEQUENCE_DELIMITER and not defined_end:
                return
            if tag != ITEM:
                raise CannotUnderstand(f"expected a sequence item, found tag {tag:08X}")
            if length == UNDEFINED_LENGTH:
                self.elements(end, depth + 1, until_item_delimiter=True)
                continue
            item_end = self.stream.tell() + length
            if item_end > end:
                raise TruncatedDataset(f"sequence item declares {length} bytes beyond the data")
            self.elements(item_end, depth + 1)

    def fragments(self, end: int) -> None:
        while True:
            tag, length = self.tag_and_length(end)
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise CannotUnderstand(f"bad pixel data fragment (tag {tag:08X})")
            position = self.stream.tell()
            if position + length > end:
                raise TruncatedDataset(f"pixel data fragment declares {length} bytes beyond data")
            self.stream.seek(position + length)


def check_dataset(
    stream: BinaryIO, start: int, end: int, explicit_vr: bool, little_endian: bool
) -> None:
    """Raise CannotUnderstand (TruncatedDataset) unless bytes [start, end) hold whole elements."""
    if end <= start:
        raise CannotUnderstand("the data set is empty")
    stream.seek(start)
    _Walker(stream, explicit_vr, little_endian).elements(end, depth=0)
