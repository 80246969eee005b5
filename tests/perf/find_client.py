"""A raw-socket C-FIND requester, for the per-query latency of tests/perf/latency.py.

pynetdicom's requester (3.0.4) is not used for that measurement, for two reasons:
- its reactor thread can take a response off the DIMSE queue while send_c_find() waits for
  it (Association._run_reactor's pause is racy: the reactor may pass its checkpoint just as
  the requester clears it, then take the message). Back to back, about one query in a few
  hundred to a few thousand lacked a match; every PDU of the missing response had arrived
  (seen with Orthanc, whose answers DCMTK's findscu always found complete);
- its threads poll with 1 ms sleeps: a C-ECHO round trip costs it ~3 ms here, which would
  hide a per-message cost of a millisecond.

One association with one presentation context (Study Root FIND, Explicit VR Little Endian);
each request is encoded with pynetdicom's message classes before the clock starts; responses
are read PDU by PDU, PDV by PDV (a PDU may hold the end of one message and the start of the
next), with no thread. The time runs from the request's sendall to the final response; the
matches' identifiers are decoded (pydicom) after the clock stops.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode

from benchmarks.dcmtk import HOST
from tests.perf.associations import (
    P_DATA,
    RELEASE_RP,
    AssociationFailed,
    associate_request,
    check_accepted,
    encode_message,
    read_pdu,
)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SOCKET_TIMEOUT_S = 60.0
MAX_RESPONSES = 100_000  # per query, at most
PRIORITY_LOW = 2  # pynetdicom's default (PS3.7 C.4.1.1.3.1 / E.1-1)
# Command set elements (PS3.7 E.1-1) and values
COMMAND_FIELD, MESSAGE_ID_RESPONDED, DATA_SET_TYPE, STATUS = 0x0100, 0x0120, 0x0800, 0x0900
C_FIND_RSP = 0x8020
NO_DATA_SET = 0x0101
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class FindAnswer:
    """One C-FIND: seconds from request to final response, its status, the matches' Study
    Instance UIDs."""

    seconds: float
    status: int
    study_uids: set[str]


def command_fields(command: bytes) -> dict[int, bytes]:
    """The elements of a command set (group 0000, Implicit VR Little Endian): element -> value."""
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if group != 0x0000:
            raise AssociationFailed(f"element ({group:04x},{element:04x}) in a command set")
        fields[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return fields


def unsigned_short(fields: dict[int, bytes], element: int) -> int:
    """A US value of a command set; AssociationFailed when it is missing."""
    value = fields.get(element)
    if value is None or len(value) != 2:
        raise AssociationFailed(f"command element (0000,{element:04x}) missing or not US")
    return int(struct.unpack("<H", value)[0])


class FindClient:
    """One association for Study Root C-FIND over a connected socket."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.message_id = 0
        self._pdvs: deque[tuple[int, bytes]] = deque()

    def _next_pdv(self) -> tuple[int, bytes]:
        """The next PDV received: its message control header and its fragment."""
        while not self._pdvs:
            pdu_type, body = read_pdu(self.connection)
            if pdu_type != P_DATA:
                raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of P-DATA-TF")
            offset = 0
            while offset + 6 <= len(body):  # PDV items: length, context ID, header, fragment
                length = struct.unpack_from(">I", body, offset)[0]
                self._pdvs.append((body[offset + 5], body[offset + 6 : offset + 4 + length]))
                offset += 4 + length
        return self._pdvs.popleft()

    def read_message(self) -> tuple[dict[int, bytes], bytes]:
        """The next DIMSE message: its command elements and its data set's bytes (b"": none)."""
        command, data = bytearray(), bytearray()
        while True:  # the command set, then the data set when there is one (PS3.8 E.2)
            control, fragment = self._next_pdv()
            if not control & 0x01:
                raise AssociationFailed("a data set fragment before its command set")
            command += fragment
            if control & 0x02:
                break
        fields = command_fields(bytes(command))
        if unsigned_short(fields, DATA_SET_TYPE) == NO_DATA_SET:
            return fields, b""
        while True:
            control, fragment = self._next_pdv()
            if control & 0x01:
                raise AssociationFailed("a command fragment inside a data set")
            data += fragment
            if control & 0x02:
                return fields, bytes(data)

    def request(self, identifier: Dataset) -> bytes:
        """A STUDY ROOT C-FIND-RQ for `identifier` with the next message ID, as PDUs."""
        self.message_id = self.message_id % 0xFFFF + 1
        primitive = C_FIND()
        primitive.MessageID = self.message_id
        primitive.AffectedSOPClassUID = STUDY_ROOT_FIND
        primitive.Priority = PRIORITY_LOW
        primitive.Identifier = BytesIO(encode(identifier, False, True) or b"")
        message = C_FIND_RQ()
        message.primitive_to_message(primitive)
        return encode_message(message)

    def find(self, identifier: Dataset) -> FindAnswer:
        """Send one C-FIND (encoded before the clock starts) and read every response."""
        request = self.request(identifier)
        matches: list[bytes] = []
        started = time.perf_counter()
        self.connection.sendall(request)
        for _ in range(MAX_RESPONSES):
            fields, data = self.read_message()
            if unsigned_short(fields, COMMAND_FIELD) != C_FIND_RSP:
                raise AssociationFailed("a message that is not a C-FIND-RSP")
            if unsigned_short(fields, MESSAGE_ID_RESPONDED) != self.message_id:
                raise AssociationFailed("a C-FIND-RSP to another message ID")
            status = unsigned_short(fields, STATUS)
            if status not in PENDING:
                break
            matches.append(data)
        else:
            raise AssociationFailed(f"more than {MAX_RESPONSES} C-FIND responses")
        seconds = time.perf_counter() - started
        uids = {str(decode(BytesIO(data), False, True).StudyInstanceUID) for data in matches}
        return FindAnswer(seconds, status, uids)

    def release(self) -> None:
        """A-RELEASE-RQ and its A-RELEASE-RP."""
        self.connection.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # PS3.8 9.3.6
        pdu_type, _ = read_pdu(self.connection)
        if pdu_type != RELEASE_RP:
            raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of A-RELEASE-RP")


@contextmanager
def find_association(port: int, called_ae_title: str) -> Iterator[FindClient]:
    """An association to the SCP on HOST:`port` for Study Root C-FIND, released at the end
    (closed without a release when the block raised)."""
    with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        associate = associate_request(called_ae_title, STUDY_ROOT_FIND, EXPLICIT_VR_LITTLE_ENDIAN)
        connection.sendall(associate)
        check_accepted(*read_pdu(connection))
        client = FindClient(connection)
        yield client
        client.release()
