"""Hostile and broken input against a real pacsd: it answers, refuses or aborts, never breaks.

Each case sends raw bytes (tests/fuzz_cases.py) and states what pacsd must answer; after every
case C-ECHO must still work, the process's threads and file descriptors must come back to their
baseline, and no spool or temporary file may be left. A seeded generator then mutates a valid
stream FUZZ_COUNT times (PACSD_FUZZ_COUNT / PACSD_FUZZ_SEED for a longer or other run).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests import datagen
from tests import fuzz_cases as fz
from tests.harness import PacsdProcess, base_config, echo
from tests.inspect_archive import dataset_bytes, index_rows, stored_files, work_files
from tests.scu import store_files

FUZZ_COUNT = int(os.environ.get("PACSD_FUZZ_COUNT", "200"))
FUZZ_SEED = int(os.environ.get("PACSD_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32))))
SETTLE_S = 6.0
MAX_PDU = 16384
ACSE_TIMEOUT = 2
NETWORK_TIMEOUT = 3


@dataclass
class Fuzzed:
    """The server under attack and its resting state."""

    server: PacsdProcess
    database_url: str
    threads: int
    descriptors: int

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def peer(self) -> fz.RawPeer:
        return fz.RawPeer(self.server.host, self.server.port)

    def usage(self) -> tuple[int, int]:
        """Threads, and descriptors other than the index pool's connections (whose number is
        bounded by the pool, checked here: a leak of those would outgrow it)."""
        descriptors, pooled = self.server.descriptors()
        assert pooled <= INDEX_DESCRIPTORS_AT_MOST, f"{pooled} index database descriptors"
        return len(os.listdir(f"/proc/{self.pid}/task")), descriptors

    def assert_healthy(self, case: str) -> None:
        """C-ECHO works, threads and descriptors return to baseline, no work file is left."""
        assert echo(self.server.host, self.server.port), f"{case}: C-ECHO failed afterwards"
        deadline = time.monotonic() + SETTLE_S
        while (usage := self.usage())[0] > self.threads or usage[1] > self.descriptors:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{case}: threads {self.threads} -> {usage[0]}, "
                    f"descriptors {self.descriptors} -> {usage[1]} after {SETTLE_S} s"
                )
            time.sleep(0.05)
        left = work_files(self.server.storage_root)
        assert left == [], f"{case}: spool/temporary files left behind: {left}"


# The index pool's connections to a SQLite index: the database and its write-ahead log each,
# for the pool's default 10 connections, its overflow when busy, and the index writer's own.
INDEX_DESCRIPTORS_AT_MOST = 2 * (10 + 10 + 1)


# Unchanged this long counts as steady: longer than the commitment and UPS workers' longest
# wait between polls (5 s), so that a poll's first reading connection (the index writer keeps
# its own) is opened before the baseline is taken, not in the middle of a case.
STEADY_FOR_S = 6.0


def _steady_usage(fuzzed: Fuzzed) -> tuple[int, int]:
    """Thread and descriptor counts once they stop changing (bounded wait)."""
    previous = fuzzed.usage()
    since = time.monotonic()
    deadline = since + 3 * STEADY_FOR_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = fuzzed.usage()
        if current != previous:
            previous, since = current, time.monotonic()
        elif time.monotonic() - since >= STEADY_FOR_S:
            return current
    return previous


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """One pacsd with short timeouts and small limits, warmed up by a C-ECHO and a C-STORE."""
    root = tmp_path_factory.mktemp("fuzz")
    config = base_config(
        root,
        network={"acse_timeout": ACSE_TIMEOUT, "network_timeout": NETWORK_TIMEOUT,
                 "dimse_timeout": 5, "max_pdu_size": MAX_PDU},
        limits={"max_dataset_size": "8MiB", "max_inflated_size": "32MiB",
                "max_inflate_ratio": 200, "max_association_request_size": "64KiB"},
    )  # fmt: skip
    server = PacsdProcess.from_config(root, config).start()
    try:
        warm_up = datagen.write_part10(
            datagen.ct_image(datagen.StudyContext(), 1, 16), root / "w.dcm"
        )
        assert store_files(server.host, server.port, [warm_up]) == [(0x0000, "")]
        fuzzed = Fuzzed(server, f"sqlite:///{root / 'index.sqlite'}", 0, 0)
        fuzzed.threads, fuzzed.descriptors = _steady_usage(fuzzed)
        yield fuzzed
    finally:
        server.stop()


# Cases ----------------------------------------------------------------------------------------

ABORTED = "aborted"


def _ended(reply: fz.Reply) -> bool:
    return any(kind in (3, 7) for kind, _ in reply.pdus)


def _answered(reply: fz.Reply) -> bool:
    return any(kind in (2, 3, 7) for kind, _ in reply.pdus)


def exchange(
    fuzzed: Fuzzed, data: bytes, timeout: float = 4.0, associate: bool = False
) -> fz.Reply:
    """Send `data` (after an accepted association when asked); collect what comes back."""
    peer = fuzzed.peer()
    try:
        if associate:
            answer = peer.associate()
            assert answer.first(0x02) is not None, f"not associated: {answer.summary()}"
        peer.send(data)
        # Before association, an A-ASSOCIATE-AC is an answer too: the peer then goes away.
        return peer.reply(timeout, until=_ended if associate else _answered)
    finally:
        peer.close()


def refused(reply: fz.Reply) -> bool:
    """An A-ABORT or A-ASSOCIATE-RJ came back, or pacsd closed the connection."""
    return _ended(reply) or reply.closed


def aborted_invalid_length(reply: fz.Reply) -> bool:
    """PS3.8 9.3.8: A-ABORT, source 2 (service-provider), reason 6 (invalid parameter value)."""
    body = reply.first(0x07)
    return body is not None and (body[2], body[3]) == (2, 6)


def rejected(reply: fz.Reply) -> bool:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return reply.first(0x03) is not None


def accepted(reply: fz.Reply) -> bool:
    """An A-ASSOCIATE-AC (PS3.8 9.3.3)."""
    return reply.first(0x02) is not None


def no_acceptance(reply: fz.Reply) -> bool:
    return reply.first(0x02) is None and refused(reply)


def _ct_dataset(rows: int = 16) -> tuple[bytes, str]:
    dataset = datagen.ct_image(datagen.StudyContext(), 1, rows)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pacsd-fuzz-{dataset.SOPInstanceUID}.dcm"
    datagen.write_part10(dataset, path)
    try:
        return dataset_bytes(path), str(dataset.SOPInstanceUID)
    finally:
        path.unlink()


def _pixel_length_offset(encoded: bytes) -> int:
    """Offset of the 4-byte length of the (last) Pixel Data element, Explicit VR LE."""
    return encoded.rindex(b"\xe0\x7f\x10\x00") + 8


def store_case(fuzzed: Fuzzed, encoded: bytes, uid: str, context_id: int = 3) -> fz.Reply:
    """A raw C-STORE of `encoded` on an accepted association; the reply to it."""
    pdus = fz.store_request(encoded, uid, context_id=context_id, max_pdu=MAX_PDU)
    peer = fuzzed.peer()
    try:
        assert peer.associate().first(0x02) is not None
        for one in pdus:
            peer.send(one)
        return peer.reply(8.0, until=lambda r: bool(r.statuses()) or _ended(r))
    finally:
        peer.close()


def truncated_store(fuzzed: Fuzzed) -> fz.Reply:
    encoded, uid = _ct_dataset()
    return store_case(fuzzed, encoded[:-100], uid)


def element_longer_than_data(fuzzed: Fuzzed) -> fz.Reply:
    encoded, uid = _ct_dataset()
    at = _pixel_length_offset(encoded)
    (length,) = struct.unpack("<L", encoded[at : at + 4])
    return store_case(
        fuzzed, encoded[:at] + struct.pack("<L", length + 1000) + encoded[at + 4 :], uid
    )


def huge_element_length(fuzzed: Fuzzed) -> fz.Reply:
    encoded, uid = _ct_dataset()
    at = _pixel_length_offset(encoded)
    return store_case(fuzzed, encoded[:at] + b"\xf0\xff\xff\xff" + encoded[at + 4 :], uid)


def deflate_bomb(size: int) -> Callable[[Fuzzed], fz.Reply]:
    def case(fuzzed: Fuzzed) -> fz.Reply:
        uid = generate_uid()
        bomb = fz.deflate_bomb(fz.header_dataset(uid), size)
        return store_case(fuzzed, bomb, uid, context_id=5)

    return case


def valid_raw_store(fuzzed: Fuzzed) -> fz.Reply:
    encoded, uid = _ct_dataset()
    return store_case(fuzzed, encoded, uid)


def store_then_stop(how: bytes | None) -> Callable[[Fuzzed], fz.Reply]:
    """A C-STORE whose data set stops halfway: then an A-ABORT (bytes) or a close (None)."""

    def case(fuzzed: Fuzzed) -> fz.Reply:
        encoded, uid = _ct_dataset(rows=256)
        pdus = fz.store_request(encoded, uid, max_pdu=MAX_PDU)
        peer = fuzzed.peer()
        try:
            assert peer.associate().first(0x02) is not None
            for one in pdus[: len(pdus) // 2]:
                peer.send(one)
            if how is not None:
                peer.send(how)
            return peer.reply(0.5, until=_ended)
        finally:
            peer.close()

    return case


def close_mid_pdu(fuzzed: Fuzzed) -> fz.Reply:
    peer = fuzzed.peer()
    peer.send(fz.associate_rq()[:40])
    peer.sock.shutdown(socket.SHUT_WR)
    try:
        return peer.reply(4.0)
    finally:
        peer.close()


def half_open(count: int, after_association: bool) -> Callable[[Fuzzed], fz.Reply]:
    """`count` connections stop inside a PDU; C-ECHO works meanwhile; pacsd closes them all."""

    def case(fuzzed: Fuzzed) -> fz.Reply:
        peers = [fuzzed.peer() for _ in range(count)]
        try:
            for peer in peers:
                if after_association:
                    assert peer.associate().first(0x02) is not None
                    peer.send(fz.p_data(length=1000) + b"\x00" * 10)
                else:
                    peer.send(fz.associate_rq()[:30])
            assert echo(fuzzed.server.host, fuzzed.server.port), "C-ECHO while half-open"
            limit = (NETWORK_TIMEOUT if after_association else ACSE_TIMEOUT) + 4.0
            replies = [peer.reply(limit) for peer in peers]
            assert all(reply.closed for reply in replies), [r.summary() for r in replies]
            return replies[0]
        finally:
            for peer in peers:
                peer.close()

    return case


def association_then(data: bytes) -> Callable[[Fuzzed], fz.Reply]:
    return lambda fuzzed: exchange(fuzzed, data, associate=True)


def before_association(data: bytes) -> Callable[[Fuzzed], fz.Reply]:
    return lambda fuzzed: exchange(fuzzed, data)


def _command() -> bytes:
    """The command fragment of a C-ECHO-RQ (its PDV value after the control header)."""
    one = fz.echo_request()[0]
    return one[12:]


_BIG_ITEM = fz.item(0x77, b"\x00" * 60000)
EVIL_AE = b"\x1b[2J\r\nEVIL\x07"  # ASCII: pynetdicom refuses other bytes
# name -> (case, what pacsd must have done, expected outcome written in the report)
CASES: dict[str, tuple[Callable[[Fuzzed], fz.Reply], Callable[[fz.Reply], bool]]] = {
    "unknown PDU type": (before_association(fz.pdu(0x09, b"\x00" * 4)), no_acceptance),
    "PDU length beyond the data": (
        before_association(fz.associate_rq()[:6] + b"\x00" * 10),  # then waits: ARTIM closes
        no_acceptance,
    ),
    "A-ASSOCIATE-RQ length 0xFFFFFFFF": (
        before_association(fz.pdu(0x01, b"\x00" * 64, length=0xFFFFFFFF)),
        aborted_invalid_length,
    ),
    "A-ASSOCIATE-RQ over max_association_request_size": (
        before_association(fz.associate_rq(user_info=fz.user_information() + _BIG_ITEM * 2)),
        aborted_invalid_length,
    ),
    "truncated presentation context item": (
        before_association(
            fz.associate_rq(user_info=fz.item(0x20, b"\x01\x00\x00\x00", length=200))
        ),
        no_acceptance,
    ),
    "item length inconsistent with PDU length": (
        before_association(fz.associate_rq(user_info=fz.item(0x50, b"\x51\x00", length=5000))),
        no_acceptance,
    ),
    "duplicate presentation context IDs": (
        before_association(
            fz.associate_rq([(1, fz.VERIFICATION, [fz.IMPLICIT]), (1, fz.CT_IMAGE, [fz.EXPLICIT])])
        ),
        lambda reply: True,
    ),
    "even presentation context IDs": (
        before_association(
            fz.associate_rq([(2, fz.VERIFICATION, [fz.IMPLICIT]), (4, fz.CT_IMAGE, [fz.EXPLICIT])])
        ),
        no_acceptance,
    ),
    "200 presentation contexts": (
        before_association(
            fz.associate_rq([((2 * i + 1) % 256, fz.CT_IMAGE, [fz.EXPLICIT]) for i in range(200)])
        ),
        accepted,
    ),
    "zero presentation contexts": (before_association(fz.associate_rq([])), rejected),
    "control characters in AE titles": (
        before_association(fz.associate_rq(calling=EVIL_AE) + fz.ABORT_RQ),
        lambda reply: True,
    ),
    "control characters in the implementation version name": (
        before_association(
            fz.associate_rq(user_info=fz.user_information(extra=fz.item(0x55, EVIL_AE)))
        ),
        lambda reply: True,
    ),
    "over-long AE title fields": (
        before_association(fz.associate_rq(raw_ae_fields=b"A" * 40)),
        no_acceptance,
    ),
    "bad protocol version": (before_association(fz.associate_rq(version=0x0100)), lambda r: True),
    "P-DATA before association": (
        before_association(b"".join(fz.echo_request())),
        no_acceptance,
    ),
    "A-RELEASE-RQ before association": (before_association(fz.RELEASE_RQ), no_acceptance),
    "garbage after a valid A-ASSOCIATE-RQ": (
        before_association(fz.associate_rq() + bytes(range(256)) * 2),
        refused,
    ),
    "P-DATA length 0xFFFFFFFF": (
        association_then(fz.p_data(length=0xFFFFFFFF) + b"\x00" * 64),
        aborted_invalid_length,
    ),
    "P-DATA one byte over the maximum PDU length": (
        association_then(fz.p_data(fz.pdv(1, 0, b"\x00" * (MAX_PDU - 5)))),
        aborted_invalid_length,
    ),
    "PDV longer than its PDU": (
        association_then(fz.p_data(fz.pdv(1, 3, _command(), length=len(_command()) + 100))),
        refused,
    ),
    "PDV shorter than its PDU": (
        association_then(fz.p_data(fz.pdv(1, 3, _command(), length=10))),
        refused,
    ),
    "zero-length PDV": (association_then(fz.p_data(fz.pdv(1, 3, b"", length=0))), refused),
    "command set that does not decode": (
        association_then(fz.p_data(fz.pdv(1, 3, b"\xff" * 40))),
        refused,
    ),
    "data set fragment before its command": (
        association_then(fz.p_data(fz.pdv(3, 2, b"\x08\x00\x16\x00"))),
        refused,
    ),
    "C-STORE on a context never proposed": (
        lambda fuzzed: store_case(fuzzed, _ct_dataset()[0], generate_uid(), context_id=7),
        refused,
    ),
    "C-STORE, truncated data set": (truncated_store, lambda r: r.statuses() == [0xC000]),
    "C-STORE, element longer than the data": (
        element_longer_than_data,
        lambda r: r.statuses() == [0xC000],
    ),
    "C-STORE, element length 0xFFFFFFF0": (
        huge_element_length,
        lambda r: r.statuses() == [0xC000],
    ),
    "C-STORE, deflate bomb (1 GiB inflated)": (
        deflate_bomb(1 << 30),
        lambda r: r.statuses() == [0xA700],
    ),
    "C-STORE, deflate bomb over the ratio (16 MiB)": (
        deflate_bomb(16 << 20),
        lambda r: r.statuses() == [0xA700],
    ),
    "C-STORE, A-ABORT in the middle of the data set": (
        store_then_stop(fz.ABORT_RQ),
        lambda r: True,
    ),
    "C-STORE, connection closed in the middle of the data set": (
        store_then_stop(None),
        lambda r: True,
    ),
    "connection closed in the middle of a PDU": (close_mid_pdu, lambda r: r.closed),
    "10 half-open connections before association": (half_open(10, False), lambda r: r.closed),
    "3 half-open connections inside a P-DATA-TF": (half_open(3, True), lambda r: r.closed),
}
# Cases that carry a C-STORE that must not be stored.
NOTHING_STORED = {name for name in CASES if name.startswith("C-STORE")}


def test_valid_raw_c_store_is_stored(fuzzed: Fuzzed) -> None:
    """The raw framing itself is sound: a well-formed C-STORE over raw PDUs gets 0x0000."""
    before = len(index_rows(fuzzed.database_url))
    reply = valid_raw_store(fuzzed)
    assert reply.statuses() == [0x0000], reply.summary()
    assert len(index_rows(fuzzed.database_url)) == before + 1
    fuzzed.assert_healthy("valid raw C-STORE")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_and_leaves_nothing_behind(fuzzed: Fuzzed, name: str) -> None:
    """Each case gets its refusal; C-ECHO still works; threads, descriptors and files return."""
    case, expected = CASES[name]
    rows = len(index_rows(fuzzed.database_url))
    files = len(stored_files(fuzzed.server.storage_root))
    reply = case(fuzzed)
    print(f"FUZZ CASE {name}: {reply.summary()}")
    assert expected(reply), f"{name}: {reply.summary()}"
    if name in NOTHING_STORED:
        assert len(index_rows(fuzzed.database_url)) == rows, f"{name}: an index row was added"
        assert len(stored_files(fuzzed.server.storage_root)) == files, f"{name}: file stored"
    fuzzed.assert_healthy(name)


def test_logs_carry_no_raw_control_characters(fuzzed: Fuzzed) -> None:
    """AE titles and other peer strings are escaped: no decoded log value holds ESC, CR or LF."""
    for name in ("control characters in AE titles", "control characters in the implementation"
                 " version name"):  # fmt: skip
        CASES[name][0](fuzzed)
        fuzzed.assert_healthy(name)
    offending = [
        line
        for line in fuzzed.server.lines
        for key, value in line.items()
        if key not in ("exception", "stack")
        and isinstance(value, str)
        and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    ]
    assert offending == []
    # The association's own lines carry the AE title, escaped.
    quoted = [
        line
        for line in fuzzed.server.lines
        if str(line.get("calling_ae_title", "")).startswith("\\x1b[2J\\r\\nEVIL")
    ]
    assert {line["event"] for line in quoted} >= {"association closed"}


def test_seeded_mutations_never_break_the_server(fuzzed: Fuzzed) -> None:
    """FUZZ_COUNT mutated association/C-ECHO/release streams; after each the server is whole."""
    print(f"FUZZ seed {FUZZ_SEED}, {FUZZ_COUNT} cases (PACSD_FUZZ_SEED / PACSD_FUZZ_COUNT)")
    outcomes: dict[str, int] = {}
    for index, mutation, data in fz.mutated_streams(FUZZ_SEED, FUZZ_COUNT):
        label = f"seed {FUZZ_SEED} case {index} ({mutation})"
        peer = fuzzed.peer()
        try:
            peer.send(data)
            reply = peer.reply(0.5, until=_ended)
        finally:
            peer.close()
        kind = _outcome_class(reply)
        outcomes[kind] = outcomes.get(kind, 0) + 1
        fuzzed.assert_healthy(label)
    print(f"FUZZ outcomes: {outcomes}")


def _outcome_class(reply: fz.Reply) -> str:
    if reply.first(0x07) is not None:
        return "A-ABORT"
    if reply.first(0x03) is not None:
        return "A-ASSOCIATE-RJ"
    if reply.first(0x06) is not None:
        return "released"
    if reply.statuses():
        return "answered"
    return "closed" if reply.closed else "no answer (client closed)"
