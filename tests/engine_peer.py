"""Raw DIMSE messages over a raw socket, for the engine protocol tests.

Builds on tests/fuzz_cases.py (PDU and item builders, `RawPeer`): A-ASSOCIATE-RQs with any
application context or extra user information sub-items, command sets (pacsd's own
`encode_command`: a plain PS3.7 E.1 packer), P-DATA-TF messages fragmented by hand (PS3.8
9.3.5, E.2), and a reader that reassembles the messages pacsd sends back and decodes their
command sets with pydicom, so that a test sees each response with its Message ID Being
Responded To and Status.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import decode

from pacsd.dimse import commands as c
from pacsd.dimse.commands import encode_command
from tests import fuzz_cases as fz

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PENDING = frozenset({0xFF00, 0xFF01})
FRAGMENT = 16000  # PDV bytes per P-DATA-TF sent: within any maximum length pacsd offers


def associate_rq(
    contexts: Sequence[tuple[int, str, list[str]]],
    calling: bytes = b"ENGINETEST",
    called: bytes = b"PACSD",
    application_context: str = fz.APPLICATION_CONTEXT,
    extra_user_items: bytes = b"",
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with the given application context name and any
    further user information sub-items (PS3.7 D.3.3) after the maximum length and
    implementation class UID."""
    body = struct.pack(">HH", 1, 0) + fz.ae_field(called) + fz.ae_field(calling) + bytes(32)
    body += fz.item(0x10, application_context.encode("ascii"))
    body += b"".join(fz.presentation_context(*context) for context in contexts)
    body += fz.user_information(extra=extra_user_items)
    return fz.pdu(0x01, body)


def async_window_item(invoked: int, performed: int) -> bytes:
    """Asynchronous Operations Window sub-item (PS3.7 D.3.3.3.1): item type 0x53, two
    2-byte fields, maximum number of operations invoked and performed."""
    return fz.item(0x53, struct.pack(">HH", invoked, performed))


def user_sub_items(associate_ac: bytes) -> dict[int, list[bytes]]:
    """Sub-item type -> values of the User Information item of an A-ASSOCIATE-AC body
    (PS3.8 9.3.3: items start after the 68 bytes of fixed fields)."""
    found: dict[int, list[bytes]] = {}
    position = 68
    while position + 4 <= len(associate_ac):
        kind, _, length = struct.unpack(">BBH", associate_ac[position : position + 4])
        if kind == 0x50:
            inner, end = position + 4, position + 4 + length
            while inner + 4 <= end:
                sub, _, sub_length = struct.unpack(">BBH", associate_ac[inner : inner + 4])
                found.setdefault(sub, []).append(associate_ac[inner + 4 : inner + 4 + sub_length])
                inner += 4 + sub_length
        position += 4 + length
    return found


def command(elements: Sequence[tuple[int, Any]]) -> bytes:
    """A command set in Implicit VR Little Endian (PS3.7 6.3.1), group length first."""
    return encode_command(elements)


def message(context_id: int, command_set: bytes, data: bytes | None = None) -> bytes:
    """The P-DATA-TF PDUs of one message: the command's fragments, then the data set's, each
    PDV in its own PDU and flagged last on its final fragment (PS3.8 E.2)."""
    pdus = _fragments(context_id, command_set, 0x01)
    if data is not None:
        pdus += _fragments(context_id, data, 0x00)
    return b"".join(pdus)


def _fragments(context_id: int, value: bytes, kind: int) -> list[bytes]:
    parts = [value[offset : offset + FRAGMENT] for offset in range(0, len(value), FRAGMENT)]
    parts = parts or [b""]
    return [
        fz.p_data(fz.pdv(context_id, kind | (0x02 if index == len(parts) - 1 else 0), part))
        for index, part in enumerate(parts)
    ]


def echo_rq(message_id: int, context_id: int = 1) -> bytes:
    """A C-ECHO-RQ (PS3.7 9.3.5.1)."""
    return message(
        context_id,
        command(
            [
                (c.AFFECTED_SOP_CLASS_UID, fz.VERIFICATION),
                (c.COMMAND_FIELD, c.C_ECHO_RQ),
                (c.MESSAGE_ID, message_id),
                (c.COMMAND_DATA_SET_TYPE, c.NO_DATA_SET),
            ]
        ),
    )


def find_rq(message_id: int, context_id: int, identifier: bytes) -> bytes:
    """A Study Root C-FIND-RQ (PS3.7 9.3.2.1) with its encoded identifier."""
    return message(
        context_id,
        command(
            [
                (c.AFFECTED_SOP_CLASS_UID, STUDY_ROOT_FIND),
                (c.COMMAND_FIELD, c.C_FIND_RQ),
                (c.MESSAGE_ID, message_id),
                (c.PRIORITY, 0),
                (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT),
            ]
        ),
        identifier,
    )


def cancel_rq(message_id: int, context_id: int) -> bytes:
    """A C-CANCEL-RQ (PS3.7 9.3.2.3): Message ID Being Responded To names the operation."""
    return message(
        context_id,
        command(
            [
                (c.COMMAND_FIELD, c.C_CANCEL_RQ),
                (c.MESSAGE_ID_BEING_RESPONDED_TO, message_id),
                (c.COMMAND_DATA_SET_TYPE, c.NO_DATA_SET),
            ]
        ),
    )


def store_rq(
    message_id: int, context_id: int, sop_class: str, sop_instance: str, data: bytes
) -> bytes:
    """A C-STORE-RQ (PS3.7 9.3.1.1) naming any Affected SOP Class/Instance UID, with `data`
    as the data set."""
    return message(
        context_id,
        command(
            [
                (c.AFFECTED_SOP_CLASS_UID, sop_class),
                (c.COMMAND_FIELD, c.C_STORE_RQ),
                (c.MESSAGE_ID, message_id),
                (c.PRIORITY, 0),
                (c.COMMAND_DATA_SET_TYPE, c.DATA_SET_PRESENT),
                (c.AFFECTED_SOP_INSTANCE_UID, sop_instance),
            ]
        ),
        data,
    )


def encode(dataset: Dataset, implicit: bool) -> bytes:
    """A data set in Implicit or Explicit VR Little Endian (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


@dataclass
class Message:
    """One DIMSE message received: its decoded command set and its data set bytes."""

    context_id: int
    command: Dataset
    data: bytes | None = None

    @property
    def field(self) -> int:
        return int(self.command.CommandField)

    @property
    def responded_to(self) -> int | None:
        value = self.command.get("MessageIDBeingRespondedTo")
        return None if value is None else int(value)

    @property
    def status(self) -> int | None:
        value = self.command.get("Status")
        return None if value is None else int(value)

    @property
    def final(self) -> bool:
        """A response whose Status is not Pending (PS3.7 C.4: the operation's last one)."""
        return self.status is not None and self.status not in PENDING


@dataclass
class DimsePeer:
    """A `RawPeer` whose P-DATA-TF PDVs are reassembled into messages as they arrive."""

    peer: fz.RawPeer
    messages: list[Message] = field(default_factory=list)
    others: list[tuple[int, bytes]] = field(default_factory=list)  # PDUs other than P-DATA-TF
    closed: bool = False
    _command: bytes = b""
    _data: bytes = b""
    _current: Message | None = None

    @classmethod
    def connect(cls, host: str, port: int) -> DimsePeer:
        return cls(fz.RawPeer(host, port))

    def associate(self, request: bytes) -> tuple[int, bytes]:
        """Send an A-ASSOCIATE-RQ; the answer PDU (AC, RJ or A-ABORT) as (type, body)."""
        reply = self.peer.associate(request)
        answer = next(((k, b) for k, b in reply.pdus if k in (2, 3, 7)), None)
        assert answer is not None, f"no answer to the A-ASSOCIATE-RQ: {reply.summary()}"
        return answer

    def send(self, data: bytes) -> None:
        assert self.peer.send(data), "pacsd closed the connection"

    def read(self, until: Callable[[DimsePeer], bool], timeout: float) -> bool:
        """Read PDUs until `until` holds (True), the connection ends or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not until(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return False
            try:
                received = self.peer.read_pdu(remaining)
            except EOFError:
                self.closed = True
                continue
            if received is None:
                continue
            kind, body = received
            if kind == 0x04:
                self._p_data(body)
            else:
                self.others.append((kind, body))
        return True

    def _p_data(self, body: bytes) -> None:
        position = 0
        while position + 6 <= len(body):
            (length,) = struct.unpack(">L", body[position : position + 4])
            context_id, control = body[position + 4], body[position + 5]
            fragment = body[position + 6 : position + 4 + length]
            position += 4 + length
            if control & 0x01:
                self._command += fragment
                if control & 0x02:
                    decoded = decode(BytesIO(self._command), True, True)
                    self._command = b""
                    current = Message(context_id, decoded)
                    if int(decoded.get("CommandDataSetType", 0x0101)) == 0x0101:
                        self.messages.append(current)
                    else:
                        self._current = current
            else:
                self._data += fragment
                if control & 0x02 and self._current is not None:
                    self._current.data, self._data = self._data, b""
                    self.messages.append(self._current)
                    self._current = None

    def responses_to(self, message_id: int) -> list[Message]:
        return [m for m in self.messages if m.responded_to == message_id]

    def final(self, message_id: int) -> Message | None:
        """The final response to the request `message_id`, once it has arrived."""
        return next((m for m in self.responses_to(message_id) if m.final), None)

    def wait_final(self, message_ids: Sequence[int], timeout: float = 30.0) -> dict[int, int]:
        """Status of the final response to each request (bounded wait; asserts they came)."""
        done = self.read(lambda p: all(p.final(i) is not None for i in message_ids), timeout)
        assert done, (
            f"no final response to every one of {list(message_ids)} in {timeout} s: "
            f"{self.summary()}"
        )
        finals = {i: self.final(i) for i in message_ids}
        return {i: int(m.status or 0) for i, m in finals.items() if m is not None}

    def summary(self) -> str:
        """What came back so far, one line."""
        parts = [
            f"{fz.PDU_NAMES.get(kind, hex(kind))}{tuple(body[:4])}" for kind, body in self.others
        ]
        statuses: dict[int | None, list[str]] = {}
        for m in self.messages:
            statuses.setdefault(m.responded_to, []).append(f"0x{m.status or 0:04X}")
        for message_id, values in statuses.items():
            shown = values if len(values) <= 4 else [*values[:2], "...", *values[-2:]]
            parts.append(f"id {message_id}: {len(values)} x [{', '.join(shown)}]")
        parts.append("closed" if self.closed else "open")
        return "; ".join(parts)

    def release(self, timeout: float = 10.0, send: bool = True) -> bool:
        """A-RELEASE-RQ (unless already sent); True when the A-RELEASE-RP came back (PS3.8
        7.2)."""
        if send and not self.peer.send(fz.RELEASE_RQ):
            return False
        return self.read(lambda p: any(kind == 0x06 for kind, _ in p.others), timeout)

    def close(self) -> None:
        self.peer.close()
