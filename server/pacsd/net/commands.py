"""DIMSE-C command sets packed directly, for what pacsd sends most: responses and C-STOREs.

pynetdicom turns each message it sends into a pydicom Dataset of the message type's command
elements, sets their values from the primitive, encodes it once to learn the Command Group
Length and once more to send it (dimse_messages.py, DIMSEMessage.primitive_to_message and
encode_msg, 3.0.4). That cost ~1 ms per message: half of a C-MOVE's CPU, a sixth of a small
C-STORE's. A command set is a short list of Implicit VR Little Endian elements (PS3.7 6.3.1,
E.1) of a few VRs, so it is packed here instead, and the message split into P-DATA exactly as
pynetdicom splits it (PS3.8 Annex E). Anything outside that (a DIMSE-N message, a value of
another form, a handler bound to EVT_DIMSE_SENT) takes pynetdicom's path.
tests/unit/test_commands.py checks the bytes and fragments against pynetdicom's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from io import BytesIO
from math import ceil
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA

_SUPPORTED = (C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE)
_COMMAND_FIELDS = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}
_SET_HERE = frozenset({"CommandGroupLength", "CommandField", "CommandDataSetType"})
_NO_DATA_SET = 0x0101  # PS3.7 E.1: Command Data Set Type, no data set present
_DATA_SET = 0x0001


class Unsupported(Exception):
    """The primitive holds something this module does not pack: use pynetdicom's path."""


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


_TAGS = {keyword: _tag(keyword) for names in _COMMAND_SET_KEYWORDS.values() for keyword in names}
_VRS = {keyword: dictionary_VR(tag) for keyword, tag in _TAGS.items()}


def _value(vr: str, value: Any) -> bytes:
    """An element value as pydicom writes it, Implicit VR Little Endian, without a charset."""
    if vr == "US" and type(value) is int:
        return struct.pack("<H", value)
    if vr == "UL" and type(value) is int:
        return struct.pack("<L", value)
    if vr in ("UI", "AE", "LO", "SH", "CS") and isinstance(value, str) and value.isascii():
        encoded = value.encode("ascii")
        if len(encoded) % 2:
            encoded += b"\0" if vr == "UI" else b" "
        return encoded
    raise Unsupported(f"{vr} value {value!r}")


def _element(keyword: str, value: bytes) -> bytes:
    tag = _TAGS[keyword]
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


class Message:
    """A DIMSE-C message to send: its encoded command set and its data set, if any."""

    def __init__(
        self, command_set: bytes, data_set: BytesIO | None, data_set_path: tuple[Path, int] | None
    ) -> None:
        self.command_set = command_set
        self.data_set = data_set
        self.data_set_path = data_set_path

    @classmethod
    def of(cls, primitive: Any) -> Message:
        """Pack `primitive` as pynetdicom would; raises Unsupported when it cannot."""
        if not isinstance(primitive, _SUPPORTED):
            raise Unsupported(type(primitive).__name__)
        is_request = primitive.MessageIDBeingRespondedTo is None
        name = f"{type(primitive).__name__.replace('_', '-')}-{'RQ' if is_request else 'RSP'}"
        class_name = name.replace("-", "_")
        data_set = None
        if class_name in _DATASET_KEYWORDS:
            data_set = getattr(primitive, _DATASET_KEYWORDS[class_name])
        data_set_path = getattr(primitive, "_dataset_path", None)
        # pynetdicom's test: an attribute that is not None (an empty BytesIO included).
        present = data_set is not None or bool(data_set_path)
        elements: dict[str, bytes] = {
            "CommandField": struct.pack("<H", _COMMAND_FIELDS[name]),
            "CommandDataSetType": struct.pack("<H", _DATA_SET if present else _NO_DATA_SET),
        }
        for keyword in _COMMAND_SET_KEYWORDS[name]:
            if keyword in _SET_HERE:
                continue
            if not hasattr(primitive, keyword):
                raise Unsupported(f"{name} without {keyword}")
            value = getattr(primitive, keyword)
            if value is not None:
                elements[keyword] = _value(_VRS[keyword], value)
        body = b"".join(
            _element(keyword, value)
            for keyword, value in sorted(elements.items(), key=lambda item: _TAGS[item[0]])
        )
        group_length = _element("CommandGroupLength", struct.pack("<L", len(body)))
        return cls(group_length + body, data_set, data_set_path)

    def fragments(self, context_id: int, max_pdu_length: int) -> Iterator[P_DATA]:
        """The message as P-DATA primitives, one PDV each (pynetdicom's encode_msg)."""
        command = self.command_set
        yield from _split(BytesIO(command), len(command), context_id, max_pdu_length, 0x01)
        if self.data_set is not None:
            encoded = self.data_set.getvalue()
            if encoded:
                yield from _split(BytesIO(encoded), len(encoded), context_id, max_pdu_length, 0)
        elif self.data_set_path is not None:
            path, offset = self.data_set_path
            with open(path, "rb") as source:
                length = source.seek(0, 2) - source.seek(offset)
                yield from _split(source, length, context_id, max_pdu_length, 0x00)


def _split(
    source: BinaryIO, length: int, context_id: int, max_pdu_length: int, kind: int
) -> Iterator[P_DATA]:
    """`length` bytes of `source` in fragments of at most max_pdu_length - 6 bytes (at least
    one); bit 0 of the header is `kind` (command or data set), bit 1 marks the last."""
    size = length if max_pdu_length == 0 else max_pdu_length - 6
    count = 1 if max_pdu_length == 0 else max(1, ceil(length / size))
    for number in range(count):
        header = kind | (0x02 if number == count - 1 else 0x00)
        yield _pdata(context_id, bytes([header]) + source.read(size))


def _pdata(context_id: int, pdv: bytes) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, pdv))
    return pdata
