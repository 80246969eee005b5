"""pacsd's packed DIMSE-C messages (net/commands.py) against pynetdicom's own encoding: the
same command set bytes and the same P-DATA fragments, for every message pacsd sends often."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE, N_ACTION
from pynetdicom.dsutils import encode

from pacsd.net.commands import Message, Unsupported

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def store_request() -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.45"  # odd length
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.45" * 50)
    return primitive


def store_request_for_move() -> C_STORE:
    primitive = store_request()
    primitive.MoveOriginatorApplicationEntityTitle = "MOVESCU"  # odd: padded
    primitive.MoveOriginatorMessageID = 3
    return primitive


def store_response(status: int = 0x0000, comment: str | None = None) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = status
    if comment is not None:
        primitive.ErrorComment = comment
    return primitive


def find_response(pending: bool) -> C_FIND:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = FIND
    primitive.Status = 0xFF00 if pending else 0x0000
    if pending:
        primitive.Identifier = BytesIO(b"\x10\x00\x10\x00\x04\x00\x00\x00DOE^")
    return primitive


def move_response(cls: type[C_MOVE] | type[C_GET], final: bool) -> Any:
    primitive = cls()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.AffectedSOPClassUID = MOVE
    primitive.Status = 0xB000 if final else 0xFF00
    primitive.NumberOfCompletedSuboperations = 4
    primitive.NumberOfFailedSuboperations = 1 if final else 0
    primitive.NumberOfWarningSuboperations = 0
    if final:
        primitive.Identifier = BytesIO(b"\x08\x00\x58\x11\x04\x00\x00\x001.2\x00")
    else:
        primitive.NumberOfRemainingSuboperations = 5
    return primitive


def echo_response() -> C_ECHO:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0x0000
    return primitive


PRIMITIVES: dict[str, Callable[[], Any]] = {
    "C-STORE-RQ": store_request,
    "C-STORE-RQ for a C-MOVE": store_request_for_move,
    "C-STORE-RSP": store_response,
    "C-STORE-RSP with Error Comment": lambda: store_response(0xA700, "storage is full"),
    "C-FIND-RSP pending": lambda: find_response(True),
    "C-FIND-RSP final": lambda: find_response(False),
    "C-MOVE-RSP pending": lambda: move_response(C_MOVE, False),
    "C-MOVE-RSP final": lambda: move_response(C_MOVE, True),
    "C-GET-RSP pending": lambda: move_response(C_GET, False),
    "C-ECHO-RSP": echo_response,
}


def pynetdicoms(primitive: Any, max_pdu: int) -> tuple[bytes, list[Any]]:
    """The command set and P-DATA fragments pynetdicom's send_msg would produce."""
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    command = encode(message.command_set, True, True)
    return command, [pdata.presentation_data_value_list for pdata in message.encode_msg(1, max_pdu)]


@pytest.mark.parametrize("name", list(PRIMITIVES))
@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
def test_packed_message_equals_pynetdicoms(name: str, max_pdu: int) -> None:
    command, fragments = pynetdicoms(PRIMITIVES[name](), max_pdu)
    message = Message.of(PRIMITIVES[name]())
    assert message.command_set == command
    ours = [pdata.presentation_data_value_list for pdata in message.fragments(1, max_pdu)]
    assert ours == fragments


@pytest.mark.parametrize("max_pdu", [0, 1000, 16384])
@pytest.mark.parametrize("size", [0, 1, 994, 5000])
def test_data_set_sent_from_a_file_is_split_as_pynetdicom_splits_it(
    tmp_path: Path, max_pdu: int, size: int
) -> None:
    """C-GET/C-MOVE sub-operations stream the stored file from its data set's offset."""
    path = tmp_path / "stored.dcm"
    path.write_bytes(b"H" * 300 + bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    primitive = store_request()
    primitive.DataSet = None
    primitive._dataset_path = (path, 300)  # type: ignore[attr-defined]
    _, fragments = pynetdicoms(primitive, max_pdu)
    ours = [
        pdata.presentation_data_value_list for pdata in Message.of(primitive).fragments(1, max_pdu)
    ]
    assert ours == fragments


def test_what_is_not_packed_takes_pynetdicoms_path() -> None:
    """DIMSE-N messages and values of another form are left to pynetdicom."""
    action = N_ACTION()
    action.MessageIDBeingRespondedTo = 1
    with pytest.raises(Unsupported):
        Message.of(action)
    with pytest.raises(Unsupported):
        Message.of(store_response(0xA700, "disque plein à 100 %"))
