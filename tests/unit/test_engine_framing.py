"""Framer (engine/framing.py): PDUs and PDVs off a byte stream, however it is split."""

from __future__ import annotations

import random
import struct

import pytest

from pacsd.engine import pdu as P
from pacsd.engine.framing import Framer, FramingError, PduTooLong

Event = tuple[object, ...]
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


class Recorder:
    """A FrameSink writing down what it is told; a PDV's data chunks are joined."""

    def __init__(
        self, limit: int = 1 << 20, known: frozenset[int] = frozenset(range(1, 8))
    ) -> None:
        self.limit = limit
        self.known = known
        self.events: list[Event] = []
        self.views: list[memoryview] = []
        self._data = bytearray()  # of the current PDV, however many chunks it came in

    def pdu_limit(self, pdu_type: int) -> int:
        if pdu_type not in self.known:
            raise FramingError(f"unknown PDU type 0x{pdu_type:02X}", reason=1)
        self.events.append(("limit", pdu_type))
        return self.limit

    def pdu(self, pdu_type: int, body: bytes) -> None:
        self.events.append(("pdu", pdu_type, bytes(body)))

    def pdv_start(self, context_id: int, control: int, length: int) -> None:
        self.events.append(("pdv_start", context_id, control, length))

    def pdv_data(self, chunk: memoryview) -> None:
        assert isinstance(chunk, memoryview)
        assert len(chunk) > 0
        self.views.append(chunk)
        self._data += chunk

    def pdv_end(self) -> None:
        if self._data:
            self.events.append(("data", bytes(self._data)))
            self._data = bytearray()
        self.events.append(("pdv_end",))


def _pdv(context_id: int, control: int, value: bytes) -> bytes:
    return P.pdv_header(len(value), context_id, control) + value


def _p_data(*pdvs: bytes) -> bytes:
    return P.pdu(P.P_DATA_TF, b"".join(pdvs))


def _stream() -> bytes:
    """An A-ASSOCIATE-RQ, two P-DATA-TF of several PDVs (one empty) and an A-RELEASE-RQ."""
    request = P.encode_associate_request(
        P.AssociateRequest(
            b"ARCHIVE",
            b"MODALITY",
            P.APPLICATION_CONTEXT_NAME,
            (P.ProposedContext(1, VERIFICATION, (IMPLICIT,)),),
            P.UserInformation(maximum_length=16384, implementation_class_uid="1.2.3"),
        )
    )
    first = _p_data(
        _pdv(1, 0x01, bytes(range(40))),
        _pdv(1, 0x03, b"command-end"),
        _pdv(1, 0x00, b"data" * 7),
    )
    second = _p_data(_pdv(3, 0x00, b""), _pdv(3, 0x02, bytes(range(200, 256)) * 3))
    return request + first + second + P.RELEASE_RQ


STREAM = _stream()


def _feed(chunks: list[bytes], sink: Recorder | None = None) -> Recorder:
    sink = sink or Recorder()
    framer = Framer(sink)
    for chunk in chunks:
        framer.feed(memoryview(chunk))
    assert framer.idle
    return sink


def _expected() -> list[Event]:
    return _feed([STREAM]).events


def test_whole_stream_reports_every_pdu_and_pdv() -> None:
    """Non-P-DATA PDUs arrive whole with their body; a P-DATA-TF arrives PDV by PDV, in order
    (PS3.8 9.3.1, 9.3.5); a PDV of no bytes gets a start and an end but no data."""
    request_body = STREAM[6 : 6 + struct.unpack_from(">L", STREAM, 2)[0]]
    assert _expected() == [
        ("limit", P.A_ASSOCIATE_RQ),
        ("pdu", P.A_ASSOCIATE_RQ, request_body),
        ("limit", P.P_DATA_TF),
        ("pdv_start", 1, 0x01, 40),
        ("data", bytes(range(40))),
        ("pdv_end",),
        ("pdv_start", 1, 0x03, 11),
        ("data", b"command-end"),
        ("pdv_end",),
        ("pdv_start", 1, 0x00, 28),
        ("data", b"data" * 7),
        ("pdv_end",),
        ("limit", P.P_DATA_TF),
        ("pdv_start", 3, 0x00, 0),
        ("pdv_end",),
        ("pdv_start", 3, 0x02, 168),
        ("data", bytes(range(200, 256)) * 3),
        ("pdv_end",),
        ("limit", P.A_RELEASE_RQ),
        ("pdu", P.A_RELEASE_RQ, bytes(4)),
    ]


def test_every_single_cut_point_gives_the_same_calls() -> None:
    """Split in two at any byte (inside a PDU header, a PDV header, a body or data), the
    stream gives the same sink calls as fed whole."""
    expected = _expected()
    for cut in range(1, len(STREAM)):
        assert _feed([STREAM[:cut], STREAM[cut:]]).events == expected, f"cut at {cut}"


def test_random_chunkings_give_the_same_calls() -> None:
    """Random splits (seeded) and a byte at a time give the same sink calls as whole."""
    expected = _expected()
    rng = random.Random(20240604)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 40)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert _feed(chunks).events == expected, f"cuts {cuts}"
    assert _feed([bytes((byte,)) for byte in STREAM]).events == expected


def test_pdv_data_is_a_view_of_the_fed_buffer() -> None:
    """PDV bytes go to the sink as views of the caller's buffer, never copied (module doc)."""
    buffer = bytearray(STREAM)
    sink = Recorder()
    Framer(sink).feed(memoryview(buffer))
    assert sink.views
    assert all(view.obj is buffer for view in sink.views)


def test_idle_only_between_pdus() -> None:
    """`idle` is False while a PDU or PDV header, a body or a PDV is partly read."""
    framer = Framer(Recorder())
    assert framer.idle
    states = []
    for byte in STREAM:
        framer.feed(memoryview(bytes((byte,))))
        states.append(framer.idle)
    boundaries = set()
    offset = 0
    while offset < len(STREAM):
        offset += 6 + struct.unpack_from(">L", STREAM, offset + 2)[0]
        boundaries.add(offset)
    assert [i + 1 for i, idle in enumerate(states) if idle] == sorted(boundaries)


def test_empty_non_p_data_pdu_is_reported_at_its_header() -> None:
    """A PDU (other than P-DATA-TF) with an empty variable field is reported when its header
    is complete, with an empty body."""
    sink = _feed([P.pdu(P.A_RELEASE_RP, b"") + P.RELEASE_RQ])
    assert sink.events == [
        ("limit", P.A_RELEASE_RP),
        ("pdu", P.A_RELEASE_RP, b""),
        ("limit", P.A_RELEASE_RQ),
        ("pdu", P.A_RELEASE_RQ, bytes(4)),
    ]


def test_unknown_pdu_type_refused_by_pdu_limit() -> None:
    """PS3.8 9.3.1: an unrecognised PDU type is refused as soon as its header is complete:
    the sink's pdu_limit raises, and the exception reaches the caller of feed."""
    sink = Recorder()
    framer = Framer(sink)
    framer.feed(memoryview(b"\x09\x00\x00\x00"))
    with pytest.raises(FramingError, match="unknown PDU type 0x09") as error:
        framer.feed(memoryview(b"\x00\x04"))
    assert error.value.reason == 1
    assert sink.events == []


def test_length_above_limit_refused_before_its_body() -> None:
    """A header announcing more than pdu_limit raises PduTooLong (A-ABORT reason 6, invalid
    PDU parameter value, PS3.8 9.3.8) before any of its body is read."""
    sink = Recorder(limit=1000)
    framer = Framer(sink)
    with pytest.raises(PduTooLong) as error:
        framer.feed(memoryview(struct.pack(">BBL", P.P_DATA_TF, 0, 0xFFFFFFFF)))
    assert (error.value.pdu_type, error.value.length, error.value.limit) == (4, 0xFFFFFFFF, 1000)
    assert error.value.reason == 6
    assert isinstance(error.value, FramingError)
    assert "0x04" in str(error.value)
    assert sink.events == [("limit", P.P_DATA_TF)]


def test_length_equal_to_limit_is_accepted() -> None:
    """A variable field exactly as long as pdu_limit is read."""
    sink = _feed([P.RELEASE_RQ], Recorder(limit=4))
    assert sink.events[-1] == ("pdu", P.A_RELEASE_RQ, bytes(4))
    with pytest.raises(PduTooLong):
        _feed([P.RELEASE_RQ], Recorder(limit=3))


@pytest.mark.parametrize("item_length", [0, 1])
def test_pdv_item_length_below_two_is_refused(item_length: int) -> None:
    """PS3.8 9.3.5.1: a PDV item length counts the context ID and the message control
    header, so it is at least 2."""
    body = struct.pack(">LBB", item_length, 1, 3) + bytes(4)
    with pytest.raises(FramingError, match="PDV item length") as error:
        _feed([P.pdu(P.P_DATA_TF, body)])
    assert error.value.reason == 6


def test_pdv_running_past_its_pdu_is_refused() -> None:
    """PS3.8 9.3.5: a PDV lies inside its P-DATA-TF; an item longer than what is left of it
    is refused, even when the bytes that follow would fill it."""
    body = struct.pack(">LBB", 12, 1, 3) + bytes(4)  # announces 10 bytes of data, 4 follow
    with pytest.raises(FramingError, match="runs past its P-DATA-TF") as error:
        _feed([P.pdu(P.P_DATA_TF, body) + bytes(16)])
    assert error.value.reason == 6


def test_pdv_header_running_past_its_pdu_is_refused() -> None:
    """A P-DATA-TF whose remaining bytes cannot hold a 6-byte PDV header is refused."""
    body = _pdv(1, 3, b"ab") + b"\x00\x00\x00"
    with pytest.raises(FramingError, match="header runs past"):
        _feed([P.pdu(P.P_DATA_TF, body) + P.RELEASE_RQ])


def test_p_data_without_a_pdv_is_refused() -> None:
    """PS3.8 9.3.5: a P-DATA-TF holds one or more PDV items; a length of 0 is refused."""
    with pytest.raises(FramingError, match="without a PDV") as error:
        _feed([P.pdu(P.P_DATA_TF, b"")])
    assert error.value.reason == 6
