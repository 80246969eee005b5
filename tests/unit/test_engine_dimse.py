"""DIMSE messages from PDVs and back (engine/dimse.py): MessageAssembler, message_pdus."""

from __future__ import annotations

import io
import struct
from itertools import islice

import pytest
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.pdu import P_DATA_TF

from pacsd.dimse import commands as c
from pacsd.dimse.commands import Command, encode_command
from pacsd.dimse.messages import AcceptedContext
from pacsd.engine.dimse import (
    COMMAND_FRAGMENT,
    LAST_FRAGMENT,
    UNLIMITED_PDU,
    DimseProtocolError,
    MemorySink,
    MessageAssembler,
    fragment_limit,
    fragments,
    message_pdus,
)
from pacsd.engine.framing import Framer

VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = "1.2.840.10008.1.2"
CONTEXTS = {
    1: AcceptedContext(1, VERIFICATION, IMPLICIT),
    3: AcceptedContext(3, STUDY_FIND, IMPLICIT),
}
ECHO = encode_command(
    [
        (c.AFFECTED_SOP_CLASS_UID, VERIFICATION),
        (c.COMMAND_FIELD, c.C_ECHO_RQ),
        (c.MESSAGE_ID, 1),
        (c.COMMAND_DATA_SET_TYPE, c.NO_DATA_SET),
    ]
)
FIND = encode_command(
    [
        (c.AFFECTED_SOP_CLASS_UID, STUDY_FIND),
        (c.COMMAND_FIELD, c.C_FIND_RQ),
        (c.MESSAGE_ID, 2),
        (c.PRIORITY, 0),
        (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT),
    ]
)
IDENTIFIER = bytes(range(256)) * 3
COMMAND_LAST = COMMAND_FRAGMENT | LAST_FRAGMENT


class Owner:
    """A MessageOwner that writes down what the assembler asks and tells."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.sinks: list[MemorySink] = []
        self.messages: list[tuple[Command, AcceptedContext, object]] = []

    def accepted_context(self, context_id: int) -> AcceptedContext | None:
        self.asked.append(context_id)
        return CONTEXTS.get(context_id)

    def data_sink(self, command: Command, context: AcceptedContext) -> MemorySink:
        sink = MemorySink(1 << 20)
        self.sinks.append(sink)
        return sink

    def message(self, command: Command, context: AcceptedContext, data: object) -> None:
        self.messages.append((command, context, data))


class _Frames:
    """A FrameSink that checks each PDU and passes its PDVs to a MessageAssembler."""

    def __init__(self, assembler: MessageAssembler, max_pdu: int = 0) -> None:
        self.assembler = assembler
        self.max_pdu = max_pdu or UNLIMITED_PDU
        self.pdv_controls: list[int] = []

    def pdu_limit(self, pdu_type: int) -> int:
        assert pdu_type == 0x04
        return self.max_pdu  # a longer PDU raises PduTooLong

    def pdu(self, pdu_type: int, body: bytes) -> None:
        raise AssertionError(f"PDU type {pdu_type} among P-DATA-TF")

    def pdv_start(self, context_id: int, control: int, length: int) -> None:
        self.pdv_controls.append(control)
        self.assembler.pdv_start(context_id, control, length)

    def pdv_data(self, chunk: memoryview) -> None:
        self.assembler.pdv_data(chunk)

    def pdv_end(self) -> None:
        self.assembler.pdv_end()


def _pdv(assembler: MessageAssembler, context_id: int, control: int, *chunks: bytes) -> None:
    """One PDV, its fragment delivered in `chunks` (as the Framer would)."""
    assembler.pdv_start(context_id, control, sum(map(len, chunks)))
    for chunk in chunks:
        assembler.pdv_data(memoryview(chunk))
    assembler.pdv_end()


def _pieces(value: bytes, size: int) -> list[bytes]:
    return [value[i : i + size] for i in range(0, len(value), size)]


def test_echo_without_data_set_completes_at_its_command() -> None:
    """PS3.7 E.1: Command Data Set Type 0x0101: the message ends with the command's last
    fragment; it is handed over with no data and no data sink is asked for."""
    owner = Owner()
    assembler = MessageAssembler(owner, 1024)
    _pdv(assembler, 1, COMMAND_LAST, ECHO)
    [(command, context, data)] = owner.messages
    assert (command.field, command.message_id, command.sop_class_uid) == (
        c.C_ECHO_RQ,
        1,
        VERIFICATION,
    )
    assert context is CONTEXTS[1]
    assert data is None
    assert owner.sinks == []
    # The next message may use another context: the first one is over.
    _pdv(assembler, 3, COMMAND_LAST, ECHO)
    assert [ctx.context_id for _, ctx, _ in owner.messages] == [1, 3]


def test_find_split_over_many_pdvs_is_reassembled() -> None:
    """PS3.8 E.2: command fragments (bit 0 set) then data set fragments, each part's last
    fragment with bit 1 set; any number of PDVs, each in any number of chunks."""
    owner = Owner()
    assembler = MessageAssembler(owner, 1024)
    pieces = _pieces(FIND, 17)
    for piece in pieces[:-1]:
        _pdv(assembler, 3, COMMAND_FRAGMENT, *_pieces(piece, 5))
    _pdv(assembler, 3, COMMAND_LAST, pieces[-1])
    assert owner.messages == []
    assert len(owner.sinks) == 1  # asked once the command set is complete
    data_pieces = _pieces(IDENTIFIER, 100)
    for piece in data_pieces[:-1]:
        _pdv(assembler, 3, 0, *_pieces(piece, 33))
    assert owner.messages == []
    _pdv(assembler, 3, LAST_FRAGMENT, data_pieces[-1])
    [(command, context, data)] = owner.messages
    assert (command.field, command.message_id, command.has_data_set) == (c.C_FIND_RQ, 2, True)
    assert context is CONTEXTS[3]
    assert data == IDENTIFIER
    assert owner.asked == [3]  # the context is looked up once per message


def test_pdvs_from_pynetdicom_reassemble() -> None:
    """A C-FIND-RQ that pynetdicom fragments at a 100-byte maximum PDU, through Framer and
    MessageAssembler, gives pynetdicom's command set and the identifier back."""
    primitive = dimse_primitives.C_FIND()
    primitive.MessageID, primitive.AffectedSOPClassUID, primitive.Priority = 7, STUDY_FIND, 0
    primitive.Identifier = io.BytesIO(IDENTIFIER)
    message = dimse_messages.C_FIND_RQ()
    message.primitive_to_message(primitive)
    stream = b""
    for p_data in message.encode_msg(3, 100):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        stream += pdu.encode()
    owner = Owner()
    assembler = MessageAssembler(owner, 1024)
    Framer(_Frames(assembler)).feed(memoryview(stream))
    [(command, _, data)] = owner.messages
    assert (command.field, command.message_id, command.sop_class_uid) == (
        c.C_FIND_RQ,
        7,
        STUDY_FIND,
    )
    assert data == IDENTIFIER


def test_data_before_command_is_refused() -> None:
    """PS3.7 6.3.1: a message starts with its command set."""
    with pytest.raises(DimseProtocolError, match="before its command"):
        MessageAssembler(Owner(), 1024).pdv_start(1, LAST_FRAGMENT, 10)


def test_data_before_command_is_complete_is_refused() -> None:
    """Data set fragments follow the command's last fragment (PS3.8 E.2)."""
    assembler = MessageAssembler(Owner(), 1024)
    _pdv(assembler, 3, COMMAND_FRAGMENT, FIND[:20])
    with pytest.raises(DimseProtocolError, match="before its command is complete"):
        assembler.pdv_start(3, 0, 10)


def test_command_fragment_inside_a_data_set_is_refused() -> None:
    """Once the command set is complete only data set fragments may follow (PS3.8 E.2)."""
    assembler = MessageAssembler(Owner(), 1024)
    _pdv(assembler, 3, COMMAND_LAST, FIND)
    _pdv(assembler, 3, 0, b"\x08\x00")
    with pytest.raises(DimseProtocolError, match="command fragment inside a data set"):
        assembler.pdv_start(3, COMMAND_FRAGMENT, 4)


@pytest.mark.parametrize("complete", [False, True], ids=["in-command", "in-data-set"])
def test_fragments_on_two_contexts_are_refused(complete: bool) -> None:
    """PS3.7 6.3.1: a message's command and data set travel on one presentation context."""
    assembler = MessageAssembler(Owner(), 1024)
    _pdv(assembler, 3, COMMAND_LAST if complete else COMMAND_FRAGMENT, FIND)
    with pytest.raises(DimseProtocolError, match="two presentation contexts"):
        assembler.pdv_start(1, 0 if complete else COMMAND_FRAGMENT, 4)


def test_pdv_on_an_unaccepted_context_is_refused() -> None:
    """PS3.8 9.3.5: a PDV names an accepted presentation context."""
    owner = Owner()
    with pytest.raises(DimseProtocolError, match="context 5, not accepted"):
        MessageAssembler(owner, 1024).pdv_start(5, COMMAND_LAST, 10)
    assert owner.asked == [5]


def test_command_set_longer_than_the_limit_is_refused() -> None:
    """A command set is bounded (limits.max_command_size): fragments adding up to the limit
    are accepted, one byte more is refused before it is read."""
    owner = Owner()
    assembler = MessageAssembler(owner, len(ECHO))
    _pdv(assembler, 1, COMMAND_FRAGMENT, ECHO[:10])
    _pdv(assembler, 1, COMMAND_LAST, ECHO[10:])
    assert len(owner.messages) == 1
    assembler = MessageAssembler(Owner(), len(ECHO) - 1)
    _pdv(assembler, 1, COMMAND_FRAGMENT, ECHO[:10])
    with pytest.raises(DimseProtocolError, match="command set longer"):
        assembler.pdv_start(1, COMMAND_LAST, len(ECHO) - 10)


def test_command_that_does_not_decode_is_refused() -> None:
    """A command set that is not group 0000 Implicit VR LE raises DimseProtocolError."""
    assembler = MessageAssembler(Owner(), 1024)
    with pytest.raises(DimseProtocolError, match="does not decode"):
        _pdv(assembler, 1, COMMAND_LAST, struct.pack("<HHL", 8, 0x16, 0))


def test_discard_releases_the_data_sink() -> None:
    """discard drops a partial message and its data; the next message starts clean."""
    owner = Owner()
    assembler = MessageAssembler(owner, 1024)
    _pdv(assembler, 3, COMMAND_LAST, FIND)
    _pdv(assembler, 3, 0, b"partial")
    assembler.discard()
    assert owner.sinks[0].finish() == b""
    _pdv(assembler, 1, COMMAND_LAST, ECHO)
    assert [command.field for command, _, _ in owner.messages] == [c.C_ECHO_RQ]


def test_memory_sink_refuses_more_than_its_limit() -> None:
    """MemorySink holds up to `limit` bytes; more raises DimseProtocolError."""
    sink = MemorySink(4)
    sink.write(memoryview(b"abcd"))
    assert sink.finish() == b"abcd"
    with pytest.raises(DimseProtocolError, match="longer than 4"):
        sink.write(memoryview(b"e"))


# -- message_pdus / fragments -----------------------------------------------------------------


def _lengths(max_pdu: int) -> list[int]:
    """Data lengths around the fragment and the one-PDU limits for `max_pdu`."""
    limit = fragment_limit(max_pdu)
    one_pdu = limit - len(FIND) - 6  # the longest data set sent with its command in one PDU
    lengths = {0, 1, limit - 1, limit, limit + 1, 5000, one_pdu, one_pdu + 1}
    return sorted(length for length in lengths if length >= 0)


def _data(length: int, seed: int) -> bytes:
    return (bytes(range(seed, 256)) * (length // (256 - seed) + 1))[:length]


@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
def test_message_pdus_reassemble_within_the_maximum_pdu(max_pdu: int) -> None:
    """message_pdus output, framed and reassembled, gives back the command and the data set;
    no PDU's variable field exceeds the peer's maximum (PS3.8 D.1; 0 means unlimited, pacsd
    then sends at most 1 MiB); the command precedes the data set (PS3.8 E.2)."""
    for length in _lengths(max_pdu):
        data = _data(length, 5)
        owner = Owner()
        frames = _Frames(MessageAssembler(owner, 1024), max_pdu)
        framer = Framer(frames)
        pdus = list(message_pdus(3, FIND, data, max_pdu))
        for pdu in pdus:
            assert pdu[0] == 0x04
            assert struct.unpack_from(">L", pdu, 2)[0] == len(pdu) - 6 <= frames.max_pdu
            framer.feed(memoryview(pdu))
        assert framer.idle
        [(command, _, received)] = owner.messages
        assert command.field == c.C_FIND_RQ
        assert received == data, (max_pdu, length)
        controls = frames.pdv_controls
        commands = [control for control in controls if control & COMMAND_FRAGMENT]
        assert controls[: len(commands)] == commands  # all command fragments first
        assert [control & LAST_FRAGMENT for control in controls].count(LAST_FRAGMENT) == 2
        if len(FIND) + length + 12 <= (max_pdu or UNLIMITED_PDU):
            assert len(pdus) == 1  # a small message goes in one PDU of two PDVs


@pytest.mark.parametrize("max_pdu", [0, 64, 16384])
def test_message_pdus_read_back_in_pynetdicom(max_pdu: int) -> None:
    """pynetdicom's own reassembly (DIMSEMessage.decode_msg) reads message_pdus output."""
    for length in _lengths(max_pdu):
        data = _data(length, 7)
        message = dimse_messages.DIMSEMessage()
        complete = False
        for encoded in message_pdus(5, FIND, data, max_pdu):
            pdu = P_DATA_TF()
            pdu.decode(encoded)
            assert not complete
            complete = message.decode_msg(pdu.to_primitive())
        assert complete
        assert message.context_id == 5
        assert message.command_set.MessageID == 2
        assert message.data_set.getvalue() == data


def test_command_only_message() -> None:
    """A message without a data set is its command's PDVs only, the last one flagged."""
    pdus = list(message_pdus(1, ECHO, None, 64))
    assert len(pdus) == 2  # 68 bytes of command, 58 per PDU at a 64-byte maximum
    assert [pdu[11] for pdu in pdus] == [COMMAND_FRAGMENT, COMMAND_LAST]
    assert b"".join(pdu[12:] for pdu in pdus) == ECHO


@pytest.mark.parametrize("length", [0, 1, 99, 100, 101, 5000])
def test_fragments_split_at_the_limit(length: int) -> None:
    """fragments: one PDV per PDU, at most `limit` bytes each, at least one (an empty value
    still gets its last fragment), only the last flagged last (PS3.8 E.2)."""
    value = bytes(i % 7 for i in range(length))
    pdus = list(fragments(9, memoryview(value), 0, 100))
    assert len(pdus) == max(1, -(-length // 100))
    for index, pdu in enumerate(pdus):
        pdu_length, item_length, context_id, control = struct.unpack_from(">xxLLBB", pdu)
        assert pdu_length == item_length + 4 == len(pdu) - 6
        assert item_length - 2 <= 100
        assert context_id == 9
        assert control == (LAST_FRAGMENT if index == len(pdus) - 1 else 0)
    assert b"".join(pdu[12:] for pdu in pdus) == value


@pytest.mark.parametrize("max_pdu", [1, 3, 4, 6])
def test_message_pdus_end_for_a_tiny_peer_maximum(max_pdu: int) -> None:
    """A peer may announce any Maximum Length (PS3.8 D.1, a 32-bit value from the wire);
    below 7 no PDV data fits. message_pdus must then end or refuse with ValueError or
    DimseProtocolError, not produce PDUs forever (pacsd does `list(message_pdus(...))`)."""
    try:
        produced = list(islice(message_pdus(1, ECHO, None, max_pdu), 10_000))
    except (ValueError, DimseProtocolError):
        return  # refusing is acceptable
    assert len(produced) < 10_000, "message_pdus does not end"
