"""DIMSE command set codec (dimse/commands.py), byte for byte against pynetdicom's."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import decode, encode

from pacsd.dimse import commands as c
from pacsd.dimse.commands import Command, CommandError, CommandValue, decode_command, encode_command

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
INSTANCE = "1.2.3.4.5.6.7"  # odd length: padded with a NUL (PS3.5 6.2)
# Any data set will do: a command set only says whether one follows.
DATA = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")

# (pynetdicom primitive, message class, primitive fields, pacsd elements without group length)
CASES: list[tuple[str, str, dict[str, Any], dict[int, CommandValue]]] = [
    ("C_ECHO", "C_ECHO_RQ", {"MessageID": 1, "AffectedSOPClassUID": VERIFICATION},
     {c.AFFECTED_SOP_CLASS_UID: VERIFICATION, c.COMMAND_FIELD: c.C_ECHO_RQ, c.MESSAGE_ID: 1,
      c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET}),
    ("C_ECHO", "C_ECHO_RSP",
     {"MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": VERIFICATION, "Status": 0},
     {c.AFFECTED_SOP_CLASS_UID: VERIFICATION, c.COMMAND_FIELD: c.C_ECHO_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 1, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET, c.STATUS: 0}),
    ("C_STORE", "C_STORE_RQ",
     {"MessageID": 7, "AffectedSOPClassUID": CT_IMAGE, "AffectedSOPInstanceUID": INSTANCE,
      "Priority": 2, "MoveOriginatorApplicationEntityTitle": "MOVER",
      "MoveOriginatorMessageID": 9, "DataSet": DATA},
     {c.AFFECTED_SOP_CLASS_UID: CT_IMAGE, c.COMMAND_FIELD: c.C_STORE_RQ, c.MESSAGE_ID: 7,
      c.PRIORITY: 2, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT,
      c.AFFECTED_SOP_INSTANCE_UID: INSTANCE, c.MOVE_ORIGINATOR_AE_TITLE: "MOVER",
      c.MOVE_ORIGINATOR_MESSAGE_ID: 9}),
    ("C_STORE", "C_STORE_RSP",
     {"MessageIDBeingRespondedTo": 7, "AffectedSOPClassUID": CT_IMAGE,
      "AffectedSOPInstanceUID": INSTANCE, "Status": 0xA700, "ErrorComment": "disk full"},
     {c.AFFECTED_SOP_CLASS_UID: CT_IMAGE, c.COMMAND_FIELD: c.C_STORE_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 7, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
      c.STATUS: 0xA700, c.ERROR_COMMENT: "disk full", c.AFFECTED_SOP_INSTANCE_UID: INSTANCE}),
    ("C_FIND", "C_FIND_RQ",
     {"MessageID": 2, "AffectedSOPClassUID": STUDY_FIND, "Priority": 0, "Identifier": DATA},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_FIND, c.COMMAND_FIELD: c.C_FIND_RQ, c.MESSAGE_ID: 2,
      c.PRIORITY: 0, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT}),
    ("C_FIND", "C_FIND_RSP",
     {"MessageIDBeingRespondedTo": 2, "AffectedSOPClassUID": STUDY_FIND, "Status": 0xFF00,
      "Identifier": DATA},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_FIND, c.COMMAND_FIELD: c.C_FIND_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 2, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT,
      c.STATUS: 0xFF00}),
    ("C_GET", "C_GET_RQ",
     {"MessageID": 3, "AffectedSOPClassUID": STUDY_GET, "Priority": 1, "Identifier": DATA},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_GET, c.COMMAND_FIELD: c.C_GET_RQ, c.MESSAGE_ID: 3,
      c.PRIORITY: 1, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT}),
    ("C_GET", "C_GET_RSP",
     {"MessageIDBeingRespondedTo": 3, "AffectedSOPClassUID": STUDY_GET, "Status": 0xFF00,
      "NumberOfRemainingSuboperations": 4, "NumberOfCompletedSuboperations": 65535,
      "NumberOfFailedSuboperations": 1, "NumberOfWarningSuboperations": 0},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_GET, c.COMMAND_FIELD: c.C_GET_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 3, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
      c.STATUS: 0xFF00, c.REMAINING_SUBOPERATIONS: 4, c.COMPLETED_SUBOPERATIONS: 65535,
      c.FAILED_SUBOPERATIONS: 1, c.WARNING_SUBOPERATIONS: 0}),
    ("C_MOVE", "C_MOVE_RQ",
     {"MessageID": 4, "AffectedSOPClassUID": STUDY_MOVE, "Priority": 0,
      "MoveDestination": "STORE", "Identifier": DATA},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_MOVE, c.COMMAND_FIELD: c.C_MOVE_RQ, c.MESSAGE_ID: 4,
      c.MOVE_DESTINATION: "STORE", c.PRIORITY: 0, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT}),
    ("C_MOVE", "C_MOVE_RSP",
     {"MessageIDBeingRespondedTo": 4, "AffectedSOPClassUID": STUDY_MOVE, "Status": 0xB000,
      "NumberOfCompletedSuboperations": 5, "NumberOfFailedSuboperations": 2,
      "NumberOfWarningSuboperations": 1},
     {c.AFFECTED_SOP_CLASS_UID: STUDY_MOVE, c.COMMAND_FIELD: c.C_MOVE_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 4, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
      c.STATUS: 0xB000, c.COMPLETED_SUBOPERATIONS: 5, c.FAILED_SUBOPERATIONS: 2,
      c.WARNING_SUBOPERATIONS: 1}),
    ("N_EVENT_REPORT", "N_EVENT_REPORT_RQ",
     {"MessageID": 5, "AffectedSOPClassUID": COMMITMENT,
      "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "EventTypeID": 1,
      "EventInformation": DATA},
     {c.AFFECTED_SOP_CLASS_UID: COMMITMENT, c.COMMAND_FIELD: c.N_EVENT_REPORT_RQ,
      c.MESSAGE_ID: 5, c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT,
      c.AFFECTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE, c.EVENT_TYPE_ID: 1}),
    ("N_EVENT_REPORT", "N_EVENT_REPORT_RSP",
     {"MessageIDBeingRespondedTo": 5, "AffectedSOPClassUID": COMMITMENT,
      "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "EventTypeID": 1, "Status": 0},
     {c.AFFECTED_SOP_CLASS_UID: COMMITMENT, c.COMMAND_FIELD: c.N_EVENT_REPORT_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 5, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
      c.STATUS: 0, c.AFFECTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE, c.EVENT_TYPE_ID: 1}),
    ("N_ACTION", "N_ACTION_RQ",
     {"MessageID": 6, "RequestedSOPClassUID": COMMITMENT,
      "RequestedSOPInstanceUID": COMMITMENT_INSTANCE, "ActionTypeID": 1,
      "ActionInformation": DATA},
     {c.REQUESTED_SOP_CLASS_UID: COMMITMENT, c.COMMAND_FIELD: c.N_ACTION_RQ, c.MESSAGE_ID: 6,
      c.COMMAND_DATA_SET_TYPE: c.DATA_SET_PRESENT,
      c.REQUESTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE, c.ACTION_TYPE_ID: 1}),
    ("N_ACTION", "N_ACTION_RSP",
     {"MessageIDBeingRespondedTo": 6, "AffectedSOPClassUID": COMMITMENT,
      "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "ActionTypeID": 1, "Status": 0x0110,
      "ErrorComment": "unknown", "ErrorID": 3},
     {c.AFFECTED_SOP_CLASS_UID: COMMITMENT, c.COMMAND_FIELD: c.N_ACTION_RSP,
      c.MESSAGE_ID_BEING_RESPONDED_TO: 6, c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
      c.STATUS: 0x0110, c.ERROR_COMMENT: "unknown", c.ERROR_ID: 3,
      c.AFFECTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE, c.ACTION_TYPE_ID: 1}),
    ("N_GET", "N_GET_RQ",
     {"MessageID": 8, "RequestedSOPClassUID": CT_IMAGE, "RequestedSOPInstanceUID": INSTANCE,
      "AttributeIdentifierList": [0x00100010, 0x7FE00010]},
     {c.REQUESTED_SOP_CLASS_UID: CT_IMAGE, c.COMMAND_FIELD: c.N_GET_RQ, c.MESSAGE_ID: 8,
      c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET, c.REQUESTED_SOP_INSTANCE_UID: INSTANCE,
      c.ATTRIBUTE_IDENTIFIER_LIST: (0x00100010, 0x7FE00010)}),
]  # fmt: skip
IDS = [case[1] for case in CASES]


def _pynetdicom_command(primitive: str, message: str, fields: dict[str, Any]) -> bytes:
    """The command set pynetdicom encodes for a primitive (Implicit VR Little Endian)."""
    built = getattr(dimse_primitives, primitive)()
    for name, value in fields.items():
        setattr(built, name, value)
    converted = getattr(dimse_messages, message)()
    converted.primitive_to_message(built)
    return bytes(encode(converted.command_set, True, True))


@pytest.mark.parametrize(("primitive", "message", "fields", "elements"), CASES, ids=IDS)
def test_encode_matches_pynetdicom(
    primitive: str, message: str, fields: dict[str, Any], elements: dict[int, CommandValue]
) -> None:
    """encode_command gives pynetdicom's bytes: Implicit VR Little Endian, ascending tags,
    the Command Group Length first (PS3.7 6.3.1, E.1), UIDs padded with a NUL and text with
    a space to an even length (PS3.5 6.2)."""
    expected = _pynetdicom_command(primitive, message, fields)
    assert encode_command(elements.items()) == expected
    # Element order in the input does not matter (PS3.5 7.1: ascending tag order on the wire).
    assert encode_command(reversed(list(elements.items()))) == expected


@pytest.mark.parametrize(("primitive", "message", "fields", "elements"), CASES, ids=IDS)
def test_decode_reads_pynetdicom_commands(
    primitive: str, message: str, fields: dict[str, Any], elements: dict[int, CommandValue]
) -> None:
    """decode_command reads every element pynetdicom sends, padding removed."""
    encoded = _pynetdicom_command(primitive, message, fields)
    command = decode_command(encoded)
    assert command.elements == {c.COMMAND_GROUP_LENGTH: len(encoded) - 12, **elements}
    assert command.field == elements[c.COMMAND_FIELD]
    assert command.has_data_set is (elements[c.COMMAND_DATA_SET_TYPE] != c.NO_DATA_SET)


@pytest.mark.parametrize(("primitive", "message", "fields", "elements"), CASES, ids=IDS)
def test_pynetdicom_reads_pacsd_commands(
    primitive: str, message: str, fields: dict[str, Any], elements: dict[int, CommandValue]
) -> None:
    """pydicom (through pynetdicom) reads pacsd's command sets with the same values."""
    dataset = decode(io.BytesIO(encode_command(elements.items())), True, True)
    values = {element.tag.element: element.value for element in dataset}
    for tag, value in elements.items():
        got = values[tag]
        if isinstance(value, tuple):
            assert tuple(got) == value
        else:
            assert got == value, hex(tag)


def test_command_accessors() -> None:
    """Command exposes the fields the engine routes on; absent elements read as None/''/()."""
    command = decode_command(
        encode_command(
            [
                (c.COMMAND_FIELD, c.N_GET_RQ),
                (c.MESSAGE_ID, 9),
                (c.REQUESTED_SOP_CLASS_UID, CT_IMAGE),
                (c.REQUESTED_SOP_INSTANCE_UID, INSTANCE),
                (c.COMMAND_DATA_SET_TYPE, c.NO_DATA_SET),
                (c.ATTRIBUTE_IDENTIFIER_LIST, (0x00100020,)),
            ]
        )
    )
    assert (command.field, command.message_id, command.responded_to) == (c.N_GET_RQ, 9, None)
    assert (command.sop_class_uid, command.sop_instance_uid) == (CT_IMAGE, INSTANCE)
    assert command.status is None
    assert not command.has_data_set
    assert command.tags(c.ATTRIBUTE_IDENTIFIER_LIST) == (0x00100020,)
    assert command.tags(c.OFFENDING_ELEMENT) == ()
    assert command.text(c.ERROR_COMMENT) == ""
    assert command.number(c.REQUESTED_SOP_CLASS_UID) is None  # a string, not an integer
    assert "N-GET" in repr(command)
    assert c.response_field(c.C_FIND_RQ) == c.C_FIND_RSP


def test_any_data_set_type_but_0101_announces_a_data_set() -> None:
    """PS3.7 E.1: Command Data Set Type 0x0101 means no data set; any other value, one."""
    for value, present in ((0x0101, False), (0x0001, True), (0x0000, True), (0xFEFE, True)):
        command = Command({c.COMMAND_FIELD: c.C_STORE_RQ, c.COMMAND_DATA_SET_TYPE: value})
        assert command.has_data_set is present


def test_unknown_elements_kept_as_bytes_and_group_length_recomputed() -> None:
    """An element not in PS3.7 Table E.1-1 is kept as raw bytes and encoded back as it was;
    a Command Group Length passed in is replaced by the real one."""
    raw = struct.pack("<HHL", 0, 0x0100, 2) + struct.pack("<H", c.C_ECHO_RQ)
    raw += struct.pack("<HHL", 0, 0x4000, 4) + b"abcd"  # (0000,4000) Retired: kept as bytes
    command = decode_command(raw)
    assert command.elements == {c.COMMAND_FIELD: c.C_ECHO_RQ, 0x4000: b"abcd"}
    encoded = encode_command([(c.COMMAND_GROUP_LENGTH, 999), *command.elements.items()])
    assert encoded == struct.pack("<HHLL", 0, 0, 4, len(raw)) + raw


def test_error_comment_and_move_destination_lose_their_padding() -> None:
    """AE and LO values are read without their leading/trailing spaces (PS3.5 6.2)."""
    raw = struct.pack("<HHL", 0, 0x0100, 2) + struct.pack("<H", c.C_MOVE_RQ)
    raw += struct.pack("<HHL", 0, 0x0600, 16) + b" STORESCP       "
    raw += struct.pack("<HHL", 0, 0x0902, 6) + b"full\0\0"
    command = decode_command(raw)
    assert command.text(c.MOVE_DESTINATION) == "STORESCP"
    assert command.text(c.ERROR_COMMENT) == "full"


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, tag, len(value)) + value


_FIELD = _element(0x0100, b"\x30\x00")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_FIELD + b"\x00\x00\x10\x01", "inside an element header"),
        (_FIELD + struct.pack("<HHL", 0x0008, 0x0016, 0), "outside group 0000"),
        (_FIELD + struct.pack("<HHL", 0, 0x0110, 4) + b"\x01\x00", "runs past"),
        (_element(0x0100, b"\x30"), "US of length 1"),
        (_FIELD + _element(0x0000, b"\x00\x00"), "UL of length 2"),
        (_FIELD + _element(0x1005, b"\x10\x00\x10\x00\x20\x00"), "AT of length 6"),
        (_element(0x0110, b"\x01\x00"), "without a Command Field"),
        (b"", "without a Command Field"),
    ],
    ids=["header", "group", "past-end", "us-length", "ul-length", "at-length", "no-field",
         "empty"],
)  # fmt: skip
def test_malformed_command_raises(raw: bytes, message: str) -> None:
    """A structurally broken command set raises CommandError (PS3.7 6.3.1: group 0000,
    Implicit VR Little Endian; values fit their VR in Table E.1-1)."""
    with pytest.raises(CommandError, match=message):
        decode_command(raw)


def test_encode_refuses_a_value_of_the_wrong_kind() -> None:
    """A tag list for a US element, or a number for a UI one, raises CommandError."""
    with pytest.raises(CommandError):
        encode_command([(c.COMMAND_FIELD, (1, 2))])
    with pytest.raises(CommandError):
        encode_command([(c.AFFECTED_SOP_CLASS_UID, 5)])


@pytest.mark.parametrize("value", [0x10000, "1"], ids=["us-too-big", "us-as-text"])
def test_encode_refuses_a_value_that_does_not_fit_us(value: CommandValue) -> None:
    """PS3.5 Table 6.2-1: US is a 2-byte unsigned integer; anything else is a CommandError."""
    with pytest.raises(CommandError):
        encode_command([(c.COMMAND_FIELD, c.C_ECHO_RQ), (c.MESSAGE_ID, value)])
