"""Raw DICOM upper-layer bytes for the fuzz suite: PDU builders, a raw peer, and mutations.

Everything here builds bytes by hand (PS3.8 9.3 PDU structures, Annex E PDVs) so that a case
can break exactly one rule; valid command sets come from pynetdicom's own encoder. The seeded
generator mutates a valid association + C-ECHO + release stream (bit flips, length fields,
truncation, insertion), so any failure is reproducible from its seed and index.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
PDU_NAMES = {
    1: "A-ASSOCIATE-RQ",
    2: "A-ASSOCIATE-AC",
    3: "A-ASSOCIATE-RJ",
    4: "P-DATA-TF",
    5: "A-RELEASE-RQ",
    6: "A-RELEASE-RP",
    7: "A-ABORT",
}
# The contexts a raw peer proposes by default: echo, CT explicit, CT deflated.
STANDARD_CONTEXTS: list[tuple[int, str, list[str]]] = [
    (1, VERIFICATION, [IMPLICIT]),
    (3, CT_IMAGE, [EXPLICIT]),
    (5, CT_IMAGE, [DEFLATED]),
]


def pdu(pdu_type: int, payload: bytes, length: int | None = None) -> bytes:
    """A PDU (PS3.8 9.3.1): type, reserved, 4-byte big-endian length, variable field."""
    declared = len(payload) if length is None else length
    return struct.pack(">BBL", pdu_type, 0, declared) + payload


def item(item_type: int, payload: bytes, length: int | None = None) -> bytes:
    """A variable item (PS3.8 9.3.2.x): type, reserved, 2-byte length, value."""
    declared = len(payload) if length is None else length
    return struct.pack(">BBH", item_type, 0, declared) + payload


def uid(value: str) -> bytes:
    return value.encode("ascii")


def presentation_context(context_id: int, abstract: str, transfers: list[str]) -> bytes:
    """Presentation context item (PS3.8 9.3.2.2) with its sub-items."""
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + item(0x30, uid(abstract))
    body += b"".join(item(0x40, uid(syntax)) for syntax in transfers)
    return item(0x20, body)


def user_information(max_length: int = 16384, extra: bytes = b"") -> bytes:
    """User information item (PS3.8 9.3.2.3, D.1): maximum length and implementation UID."""
    body = item(0x51, struct.pack(">L", max_length)) + item(0x52, uid("1.2.826.0.1.3680043.9.1"))
    return item(0x50, body + extra)


def ae_field(title: bytes) -> bytes:
    return title.ljust(16, b" ")[:16]


def associate_rq(
    contexts: list[tuple[int, str, list[str]]] | None = None,
    calling: bytes = b"FUZZER",
    called: bytes = b"PACSD",
    version: int = 1,
    user_info: bytes | None = None,
    raw_ae_fields: bytes | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    proposed = STANDARD_CONTEXTS if contexts is None else contexts
    titles = raw_ae_fields if raw_ae_fields is not None else ae_field(called) + ae_field(calling)
    body = struct.pack(">HH", version, 0) + titles + b"\x00" * 32
    body += item(0x10, uid(APPLICATION_CONTEXT))
    body += b"".join(presentation_context(*context) for context in proposed)
    body += user_information() if user_info is None else user_info
    return pdu(0x01, body)


def pdv(context_id: int, control: int, fragment: bytes, length: int | None = None) -> bytes:
    """A presentation data value item (PS3.8 9.3.5.1, E.2): length, context, header, data."""
    value = bytes([context_id, control]) + fragment
    return struct.pack(">L", len(value) if length is None else length) + value


def p_data(*values: bytes, length: int | None = None) -> bytes:
    return pdu(0x04, b"".join(values), length)


RELEASE_RQ = pdu(0x05, b"\x00" * 4)
ABORT_RQ = pdu(0x07, b"\x00" * 4)


def _encoded(message: Any, primitive: Any, context_id: int, max_pdu: int) -> list[bytes]:
    message.primitive_to_message(primitive)
    encoded = []
    for primitive_part in message.encode_msg(context_id, max_pdu):
        data_pdu = P_DATA_TF()
        data_pdu.from_primitive(primitive_part)
        encoded.append(data_pdu.encode())
    return encoded


def echo_request(context_id: int = 1, message_id: int = 1) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-ECHO-RQ."""
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    return _encoded(C_ECHO_RQ(), primitive, context_id, 16384)


def store_request(
    encoded_dataset: bytes,
    sop_instance_uid: str,
    context_id: int = 3,
    message_id: int = 7,
    max_pdu: int = 16384,
) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE-RQ carrying `encoded_dataset` as it is."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 0
    primitive.DataSet = BytesIO(encoded_dataset)
    return _encoded(C_STORE_RQ(), primitive, context_id, max_pdu)


def deflate_bomb(header: bytes, inflated_size: int) -> bytes:
    """A raw deflate stream (PS3.5 A.5) of `header` + an OB element of `inflated_size` zeros.

    A fully flushed segment of compressed zeros is byte-aligned and independent of what came
    before, so it can be repeated: a GiB costs ~1 MB and no time to build.
    """
    element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated_size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = compressor.compress(header + element) + compressor.flush(zlib.Z_FULL_FLUSH)
    megabyte = compressor.compress(b"\x00" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(inflated_size, 1 << 20)
    tail = compressor.compress(b"\x00" * rest) + compressor.flush(zlib.Z_FINISH)
    return start + megabyte * whole + tail


@dataclass
class Reply:
    """What pacsd sent back on a raw connection, and how the connection ended."""

    pdus: list[tuple[int, bytes]] = field(default_factory=list)
    closed: bool = False

    def first(self, pdu_type: int) -> bytes | None:
        return next((body for kind, body in self.pdus if kind == pdu_type), None)

    def statuses(self) -> list[int]:
        """The Status (0000,0900) of every DIMSE response command in the P-DATA received."""
        found = []
        for kind, body in self.pdus:
            if kind != 0x04:
                continue
            position = 0
            while position + 6 <= len(body):
                (length,) = struct.unpack(">L", body[position : position + 4])
                header = body[position + 5]
                if header & 1:
                    command = decode(
                        BytesIO(body[position + 6 : position + 4 + length]), True, True
                    )
                    if "Status" in command:
                        found.append(int(command.Status))
                position += 4 + length
        return found

    def summary(self) -> str:
        """One line: the PDUs received (A-ABORT/RJ with source and reason) and the end."""
        parts = []
        for kind, body in self.pdus:
            name = PDU_NAMES.get(kind, f"0x{kind:02X}")
            if kind == 0x07 and len(body) >= 4:
                name += f"(source {body[2]}, reason {body[3]})"
            elif kind == 0x03 and len(body) >= 4:
                name += f"(result {body[1]}, source {body[2]}, reason {body[3]})"
            parts.append(name)
        parts += [f"status 0x{status:04X}" for status in self.statuses()]
        parts.append("closed" if self.closed else "left open")
        return ", ".join(parts)


class RawPeer:
    """One TCP connection to pacsd that sends whatever bytes it is told to."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> bool:
        """Send; False if pacsd already closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def read_pdu(self, timeout: float) -> tuple[int, bytes] | None:
        """The next whole PDU, or None at end of stream or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 6:
                kind, _, length = struct.unpack(">BBL", self.buffer[:6])
                if len(self.buffer) >= 6 + length:
                    body, self.buffer = self.buffer[6 : 6 + length], self.buffer[6 + length :]
                    return kind, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def reply(self, timeout: float, until: Callable[[Reply], bool] | None = None) -> Reply:
        """Collect PDUs until the connection closes, `until` holds, or `timeout` passes."""
        reply = Reply()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                received = self.read_pdu(deadline - time.monotonic())
            except EOFError:
                reply.closed = True
                return reply
            if received is None:
                return reply
            reply.pdus.append(received)
            if until is not None and until(reply):
                return reply
        return reply

    def associate(self, request: bytes | None = None) -> Reply:
        """Send an A-ASSOCIATE-RQ and wait for the answer."""
        self.send(associate_rq() if request is None else request)
        return self.reply(5.0, until=lambda r: bool(r.pdus) and r.pdus[-1][0] in (2, 3, 7))

    def close(self) -> None:
        self.sock.close()


def accepted_contexts(associate_ac: bytes) -> dict[int, int]:
    """Context ID -> result (0 accepted) from an A-ASSOCIATE-AC body (PS3.8 9.3.3.2)."""
    results = {}
    position = 68
    while position + 4 <= len(associate_ac):
        kind, _, length = struct.unpack(">BBH", associate_ac[position : position + 4])
        if kind == 0x21:
            results[associate_ac[position + 4]] = associate_ac[position + 6]
        position += 4 + length
    return results


# The seeded generator -------------------------------------------------------------------------


def valid_stream() -> bytes:
    """Association, C-ECHO, release: the stream the generator mutates."""
    return associate_rq() + b"".join(echo_request()) + RELEASE_RQ


def _flip_bits(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)


def _length_field(rng: random.Random, data: bytearray) -> None:
    """Overwrite a PDU or item length field (or any 2/4 bytes) with an edge value."""
    starts = [0] + [i for i in range(len(data) - 6) if data[i] in (0x04, 0x05, 0x20, 0x30)]
    position = rng.choice(starts)
    width = rng.choice((2, 4))
    value = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFF0, rng.randrange(1 << 16)))
    offset = position + 2
    packed = struct.pack(">L", value & 0xFFFFFFFF)[-width:]
    data[offset : offset + width] = packed


def _truncate(rng: random.Random, data: bytearray) -> None:
    """Cut the stream short, keeping at least its first byte (a second cut may find only one)."""
    if len(data) > 1:
        del data[rng.randrange(1, len(data)) :]


def _insert(rng: random.Random, data: bytearray) -> None:
    position = rng.randrange(len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    data[position:position] = junk


MUTATIONS: dict[str, Callable[[random.Random, bytearray], None]] = {
    "bit-flip": _flip_bits,
    "length-field": _length_field,
    "truncation": _truncate,
    "insertion": _insert,
}


def mutated_streams(seed: int, count: int) -> Iterator[tuple[int, str, bytes]]:
    """`count` (index, mutation, bytes) cases, reproducible from `seed`."""
    rng = random.Random(seed)
    base = valid_stream()
    names = sorted(MUTATIONS)
    for index in range(count):
        data = bytearray(base)
        name = rng.choice(names)
        MUTATIONS[name](rng, data)
        if rng.random() < 0.25:  # sometimes two mutations
            second = rng.choice(names)
            MUTATIONS[second](rng, data)
            name = f"{name}+{second}"
        yield index, name, bytes(data)


def header_dataset(sop_instance_uid: str) -> bytes:
    """A minimal CT header in Explicit VR Little Endian, without pixel data (for bombs)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    dataset = Dataset()
    dataset.SOPClassUID = CT_IMAGE
    dataset.SOPInstanceUID = sop_instance_uid
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.9.7.1"
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7.2"
    dataset.PatientID = "FUZZ"
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, dataset)
    return buffer.getvalue()
