"""DIMSE command sets (PS3.7 6.3.1, Annex E): decoded into a `Command`, packed back to bytes.

A command set is a short list of group 0000 elements, always Implicit VR Little Endian; the
VR of each comes from PS3.7 Table E.1-1 (here `_VRS`). Decoding is strict about structure
(an element that runs past the data, a tag outside group 0000, a value whose length does not
fit its VR raise `CommandError`: the stream cannot be trusted any further) and lenient about
content (an unknown tag is kept as bytes; a retired one is ignored by its readers).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

# Command Field values (PS3.7 E.1, Table E.1-1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF
COMMAND_NAMES = {
    C_STORE_RQ: "C-STORE",
    C_GET_RQ: "C-GET",
    C_FIND_RQ: "C-FIND",
    C_MOVE_RQ: "C-MOVE",
    C_ECHO_RQ: "C-ECHO",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT",
    N_GET_RQ: "N-GET",
    N_SET_RQ: "N-SET",
    N_ACTION_RQ: "N-ACTION",
    N_CREATE_RQ: "N-CREATE",
    N_DELETE_RQ: "N-DELETE",
    C_CANCEL_RQ: "C-CANCEL",
}
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101  # Command Data Set Type: "no data set present" (PS3.7 E.1)
DATA_SET_PRESENT = 0x0001

# Command elements (PS3.7 Table E.1-1, E.2-1).
COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
ERROR_ID = 0x00000903
AFFECTED_SOP_INSTANCE_UID = 0x00001000
REQUESTED_SOP_INSTANCE_UID = 0x00001001
EVENT_TYPE_ID = 0x00001002
ATTRIBUTE_IDENTIFIER_LIST = 0x00001005
ACTION_TYPE_ID = 0x00001008
REMAINING_SUBOPERATIONS = 0x00001020
COMPLETED_SUBOPERATIONS = 0x00001021
FAILED_SUBOPERATIONS = 0x00001022
WARNING_SUBOPERATIONS = 0x00001023
MOVE_ORIGINATOR_AE_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

_VRS: dict[int, str] = {
    COMMAND_GROUP_LENGTH: "UL",
    AFFECTED_SOP_CLASS_UID: "UI",
    REQUESTED_SOP_CLASS_UID: "UI",
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    MESSAGE_ID_BEING_RESPONDED_TO: "US",
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    COMMAND_DATA_SET_TYPE: "US",
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    ERROR_ID: "US",
    AFFECTED_SOP_INSTANCE_UID: "UI",
    REQUESTED_SOP_INSTANCE_UID: "UI",
    EVENT_TYPE_ID: "US",
    ATTRIBUTE_IDENTIFIER_LIST: "AT",
    ACTION_TYPE_ID: "US",
    REMAINING_SUBOPERATIONS: "US",
    COMPLETED_SUBOPERATIONS: "US",
    FAILED_SUBOPERATIONS: "US",
    WARNING_SUBOPERATIONS: "US",
    MOVE_ORIGINATOR_AE_TITLE: "AE",
    MOVE_ORIGINATOR_MESSAGE_ID: "US",
}
_ELEMENT_HEADER = struct.Struct("<HHL")

CommandValue = int | str | tuple[int, ...] | bytes


class CommandError(Exception):
    """A command set that cannot be decoded or encoded."""


class Command:
    """A decoded command set: element tag -> value (int, str, tuple of tags, or raw bytes)."""

    __slots__ = ("elements",)

    def __init__(self, elements: Mapping[int, CommandValue]) -> None:
        self.elements = dict(elements)

    def __repr__(self) -> str:
        return (
            f"Command({COMMAND_NAMES.get(self.field & 0x7FFF, hex(self.field))}, {self.elements})"
        )

    def number(self, tag: int) -> int | None:
        """An integer element's value, or None when absent or not an integer."""
        value = self.elements.get(tag)
        return value if type(value) is int else None

    def text(self, tag: int) -> str:
        """A text element's value ('' when absent)."""
        value = self.elements.get(tag)
        return value if isinstance(value, str) else ""

    def tags(self, tag: int) -> tuple[int, ...]:
        """An AT element's tags (() when absent)."""
        value = self.elements.get(tag)
        return value if isinstance(value, tuple) else ()

    @property
    def field(self) -> int:
        """Command Field (0 when absent)."""
        return self.number(COMMAND_FIELD) or 0

    @property
    def message_id(self) -> int | None:
        """Message ID of a request."""
        return self.number(MESSAGE_ID)

    @property
    def responded_to(self) -> int | None:
        """Message ID Being Responded To of a response (or of a C-CANCEL)."""
        return self.number(MESSAGE_ID_BEING_RESPONDED_TO)

    @property
    def has_data_set(self) -> bool:
        """PS3.7 E.1: any Command Data Set Type other than 0x0101 announces a data set."""
        return self.number(COMMAND_DATA_SET_TYPE) != NO_DATA_SET

    @property
    def status(self) -> int | None:
        """Status of a response."""
        return self.number(STATUS)

    @property
    def sop_class_uid(self) -> str:
        """Affected SOP Class UID, or Requested SOP Class UID (N-GET/SET/ACTION/DELETE)."""
        return self.text(AFFECTED_SOP_CLASS_UID) or self.text(REQUESTED_SOP_CLASS_UID)

    @property
    def sop_instance_uid(self) -> str:
        """Affected or Requested SOP Instance UID."""
        return self.text(AFFECTED_SOP_INSTANCE_UID) or self.text(REQUESTED_SOP_INSTANCE_UID)


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode an Implicit VR Little Endian command set (PS3.7 6.3.1)."""
    elements: dict[int, CommandValue] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise CommandError("command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) outside group 0000")
        if length > end - offset:
            raise CommandError(f"element (0000,{element:04X}) runs past the command set")
        tag = element
        elements[tag] = _decode_value(tag, bytes(data[offset : offset + length]))
        offset += length
    if COMMAND_FIELD not in elements:
        raise CommandError("command set without a Command Field")
    return Command(elements)


def _decode_value(tag: int, raw: bytes) -> CommandValue:
    vr = _VRS.get(tag)
    if vr == "US":
        if len(raw) != 2:
            raise CommandError(f"(0000,{tag:04X}) US of length {len(raw)}")
        return int(struct.unpack("<H", raw)[0])
    if vr == "UL":
        if len(raw) != 4:
            raise CommandError(f"(0000,{tag:04X}) UL of length {len(raw)}")
        return int(struct.unpack("<L", raw)[0])
    if vr == "AT":
        if len(raw) % 4:
            raise CommandError(f"(0000,{tag:04X}) AT of length {len(raw)}")
        pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return tuple((pairs[i] << 16) | pairs[i + 1] for i in range(0, len(pairs), 2))
    if vr is None:
        return raw
    text = raw.decode("ascii", "replace")  # UI, AE, LO: the default repertoire (PS3.7 6.3.1)
    return text.rstrip("\0 ") if vr == "UI" else text.strip(" \0")


def encode_command(elements: Iterable[tuple[int, CommandValue]]) -> bytes:
    """Pack (tag, value) pairs, group 0000, with the Command Group Length first."""
    body = b"".join(
        _encode_element(tag, value)
        for tag, value in sorted(elements, key=lambda pair: pair[0])
        if tag != COMMAND_GROUP_LENGTH
    )
    return _ELEMENT_HEADER.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def _encode_element(tag: int, value: CommandValue) -> bytes:
    raw = _encode_value(tag, value)
    return _ELEMENT_HEADER.pack(0, tag, len(raw)) + raw


def _encode_value(tag: int, value: CommandValue) -> bytes:
    vr = _VRS.get(tag)
    if vr in ("US", "UL"):  # PS3.5 Table 6.2-1: 2- and 4-byte unsigned integers
        maximum = 0xFFFF if vr == "US" else 0xFFFFFFFF
        if type(value) is not int or not 0 <= value <= maximum:
            raise CommandError(f"(0000,{tag:04X}): {value!r} is not a {vr} value")
        return struct.pack("<H" if vr == "US" else "<L", value)
    if vr == "AT" and isinstance(value, tuple):
        return b"".join(struct.pack("<HH", item >> 16, item & 0xFFFF) for item in value)
    if isinstance(value, str):
        encoded = value.encode("ascii", "replace")
        if len(encoded) % 2:  # PS3.5 6.2: even length; UI pads with NUL, the others a space
            encoded += b"\0" if vr == "UI" else b" "
        return encoded
    if isinstance(value, bytes):
        return value
    raise CommandError(f"(0000,{tag:04X}): cannot encode {value!r} as {vr}")


def response_field(request_field: int) -> int:
    """The Command Field of the response to a request."""
    return request_field | RESPONSE_BIT
