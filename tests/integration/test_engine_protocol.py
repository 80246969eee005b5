"""Black-box protocol behaviours of pacsd's asyncio DICOM engine, over raw sockets.

Each test talks to a real pacsd on 127.0.0.1 with hand-built PDUs (tests/fuzz_cases.py,
tests/engine_peer.py) so that it controls exactly what is sent and when: a request whose body
never comes, an unknown application context or command, a bad C-STORE among good ones,
C-CANCEL in the same write as its C-FIND, pipelined requests under an asynchronous operations
window, and many idle associations. Waits are bounded polls; nothing asserts on speed.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydicom.dataset import Dataset

from tests import datagen
from tests import engine_peer as ep
from tests import fuzz_cases as fz
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess, base_config, echo
from tests.inspect_archive import index_rows
from tests.scu import store_files

ARCHIVE_STUDIES = 300  # one instance per study: a study-level C-FIND matches all of them
CANCEL_ROUNDS = 12
WINDOW = 4
IDLE_ASSOCIATIONS = 100
THREAD_GROWTH_LIMIT = 10
ECHO_CONTEXT = [(1, fz.VERIFICATION, [fz.IMPLICIT])]
FIND_CONTEXTS = [(1, fz.VERIFICATION, [fz.IMPLICIT]), (3, ep.STUDY_ROOT_FIND, [fz.IMPLICIT])]


def _ended(reply: fz.Reply) -> bool:
    return any(kind in (3, 7) for kind, _ in reply.pdus)


# 1. Timers before association ---------------------------------------------------------------


def test_a_started_associate_request_that_stalls_is_closed_within_seconds(
    pacsd_server: ServerFactory,
) -> None:
    """A connection that begins an A-ASSOCIATE-RQ (a header announcing 200 bytes, then 10 of
    them) and sends nothing more is closed within ~8 s, well before ARTIM (acse_timeout 30):
    pacsd gives a request that has begun 5 s to be complete."""
    server = pacsd_server(network={"acse_timeout": 30})
    peer = fz.RawPeer(server.host, server.port)
    try:
        request = fz.associate_rq()
        assert len(request) > 16
        # PS3.8 9.3.2: type 0x01, reserved, 4-byte length; the variable field never completes.
        assert peer.send(struct.pack(">BBL", 0x01, 0, 200) + request[6:16])
        sent = time.monotonic()
        reply = peer.reply(8.0)
        waited = time.monotonic() - sent
    finally:
        peer.close()
    assert reply.closed, f"still open after {waited:.1f} s: {reply.summary()}"
    assert reply.first(0x02) is None, reply.summary()
    print(f"stalled A-ASSOCIATE-RQ closed after {waited:.1f} s: {reply.summary()}")


def test_an_idle_connection_is_kept_until_artim(pacsd_server: ServerFactory) -> None:
    """A connection that sends nothing at all is not closed by the 5 s bound of a started
    request: with acse_timeout 12 it is still open after 7 s, and ARTIM (PS3.8 9.1.5, Sta2)
    closes it by 12 s plus a margin."""
    acse_timeout = 12.0
    server = pacsd_server(network={"acse_timeout": acse_timeout})
    peer = fz.RawPeer(server.host, server.port)
    try:
        connected = time.monotonic()
        # Readable before 7 s would mean pacsd closed it (or sent something): it must not.
        deadline = connected + 7.0
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([peer.sock], [], [], remaining)
            if readable:
                peer.sock.setblocking(False)
                try:
                    data = peer.sock.recv(64, socket.MSG_PEEK)
                except BlockingIOError:
                    peer.sock.setblocking(True)
                    continue
                raise AssertionError(
                    f"idle connection ended after {time.monotonic() - connected:.1f} s, "
                    f"before ARTIM ({acse_timeout} s): received {data!r}"
                )
        reply = peer.reply(connected + acse_timeout + 4.0 - time.monotonic())
        waited = time.monotonic() - connected
    finally:
        peer.close()
    assert reply.closed, f"still open after {waited:.1f} s: {reply.summary()}"
    assert reply.first(0x02) is None, reply.summary()
    print(f"idle connection closed after {waited:.1f} s: {reply.summary()}")


# 2. Application context ---------------------------------------------------------------------


def test_unknown_application_context_is_rejected_1_1_2(pacsd_server: ServerFactory) -> None:
    """An A-ASSOCIATE-RQ whose application context name is not 1.2.840.10008.3.1.1.1 (PS3.7
    A.2.1) gets A-ASSOCIATE-RJ rejected-permanent (1), service-user (1), application context
    name not supported (2): PS3.8 Table 9-21, as DCMTK answers."""
    server = pacsd_server()
    peer = ep.DimsePeer.connect(server.host, server.port)
    try:
        request = ep.associate_rq(ECHO_CONTEXT, application_context="1.2.840.10008.3.1.1.2")
        kind, body = peer.associate(request)
    finally:
        peer.close()
    assert kind == 0x03, f"expected A-ASSOCIATE-RJ, got {fz.PDU_NAMES.get(kind)} {body!r}"
    assert (body[1], body[2], body[3]) == (1, 1, 2)
    assert echo(server.host, server.port)


# 3. Unknown command field -------------------------------------------------------------------


def test_unknown_command_field_aborts_with_one_warning_and_no_traceback(
    pacsd_server: ServerFactory,
) -> None:
    """A well-formed command set with Command Field 0x0042 (no DIMSE command, PS3.7 E.1) on
    an accepted Verification context: pacsd aborts the association (A-ABORT, PDU type 7,
    PS3.8 9.3.8), logs one warning line for it and no exception; C-ECHO works afterwards."""
    server = pacsd_server()
    calling = "UNKNOWNCMD"
    peer = ep.DimsePeer.connect(server.host, server.port)
    try:
        kind, body = peer.associate(ep.associate_rq(ECHO_CONTEXT, calling=calling.encode()))
        assert kind == 0x02, f"not accepted: {fz.PDU_NAMES.get(kind)} {body!r}"
        unknown = ep.command(
            [
                (0x0002, fz.VERIFICATION),  # Affected SOP Class UID
                (0x0100, 0x0042),  # Command Field: not one PS3.7 defines
                (0x0110, 1),  # Message ID
                (0x0800, 0x0101),  # Command Data Set Type: none
            ]
        )
        peer.send(ep.message(1, unknown))
        peer.read(lambda p: p.closed or any(k == 0x07 for k, _ in p.others), 10.0)
    finally:
        peer.close()
    assert any(k == 0x07 for k, _ in peer.others), f"no A-ABORT: {peer.summary()}"
    assert echo(server.host, server.port), "C-ECHO failed after the abort"

    deadline = time.monotonic() + 15.0
    while not (accepted := _closed_lines(server, calling)):
        assert time.monotonic() < deadline, f"no 'association closed':\n{server.output()}"
        time.sleep(0.05)
    assert len(accepted) == 1, accepted
    assert accepted[0]["state"] == "aborted"
    association_id = accepted[0]["association_id"]
    lines = [line for line in server.lines if line.get("association_id") == association_id]
    warnings = [line for line in lines if line.get("level") == "warning"]
    print("log lines of the association:", *lines, sep="\n  ")
    assert len(warnings) == 1, warnings
    with_exception = [
        line for line in lines if {"exception", "exc_info", "stack", "traceback"} & set(line)
    ]
    assert with_exception == []
    assert not any("Traceback" in raw for raw in server.raw_lines), server.output()


# 4. One bad request among good ones ---------------------------------------------------------


def _ct_payload() -> tuple[bytes, str]:
    """A valid CT data set in Explicit VR Little Endian, and its SOP Instance UID."""
    dataset = datagen.ct_image(datagen.StudyContext(patient_id="PID-BADSTORE"), 1, 16)
    return ep.encode(dataset, implicit=False), str(dataset.SOPInstanceUID)


def test_a_bad_c_store_costs_only_itself(server: PacsdProcess, database_url: str) -> None:
    """On one association: a C-STORE-RQ whose Affected SOP Class UID and Affected SOP
    Instance UID are both "31" (carrying a valid CT data set on an accepted CT Image Storage
    context) gets a failure status (0x0122 SOP Class Not Supported: its SOP class is not its
    context's, PS3.7 C.5.x / PS3.4 B.2.3); the valid C-STOREs after it get 0x0000 on the same
    association and are stored and indexed."""
    contexts = [(1, fz.VERIFICATION, [fz.IMPLICIT]), (3, fz.CT_IMAGE, [fz.EXPLICIT])]
    peer = ep.DimsePeer.connect(server.host, server.port)
    valid: list[str] = []
    try:
        kind, body = peer.associate(ep.associate_rq(contexts, calling=b"BADSTORE"))
        assert kind == 0x02, f"not accepted: {fz.PDU_NAMES.get(kind)} {body!r}"
        assert fz.accepted_contexts(body).get(3) == 0, fz.accepted_contexts(body)
        payload, _uid = _ct_payload()
        peer.send(ep.store_rq(1, 3, "31", "31", payload))
        statuses = peer.wait_final([1])
        for message_id in range(2, 5):
            payload, uid = _ct_payload()
            valid.append(uid)
            peer.send(ep.store_rq(message_id, 3, fz.CT_IMAGE, uid, payload))
            statuses.update(peer.wait_final([message_id]))
        assert not peer.closed, peer.summary()
        assert peer.others == [], peer.summary()
        assert peer.release(), peer.summary()
    finally:
        peer.close()
    print(f"statuses: {', '.join(f'{k}: 0x{v:04X}' for k, v in statuses.items())}")
    assert statuses[1] == 0x0122, f"bad C-STORE answered 0x{statuses[1]:04X}"
    assert [statuses[i] for i in range(2, 5)] == [0x0000] * 3
    rows = index_rows(database_url)
    indexed = {row["sop_instance_uid"] for row in rows}
    assert set(valid) <= indexed, (valid, indexed)
    assert "31" not in indexed
    for row in rows:
        if row["sop_instance_uid"] in valid:
            assert (server.storage_root / row["file_path"]).is_file(), row["file_path"]
    # The refusal counts as a failed operation of the association, beside the three stores.
    deadline = time.monotonic() + 15
    while not (closed := _closed_lines(server, "BADSTORE")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(line["operations"], line["failures"]) for line in closed] == [(4, 1)], closed


def _closed_lines(server: PacsdProcess, calling: str) -> list[dict[str, object]]:
    return [
        line
        for line in server.events("association closed")
        if line.get("calling_ae_title") == calling
    ]


# 6, 7. A populated archive: C-CANCEL and the asynchronous operations window -----------------


@dataclass
class Archive:
    server: PacsdProcess
    studies: int


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A pacsd holding ARCHIVE_STUDIES studies of one small CT each, whose policy grants an
    asynchronous operations window of WINDOW (PS3.7 D.3.3.3) to whoever proposes one."""
    root = tmp_path_factory.mktemp("engine-archive")
    policies = [
        {
            "name": "engine-window",
            "sop_classes": ["verification", "storage", "query-retrieve"],
            "limits": {"async_operations_window": WINDOW},
        }
    ]
    config = base_config(root, policies=policies)
    server = PacsdProcess.from_config(root, config).start()
    try:
        paths = [
            datagen.write_part10(
                datagen.ct_image(datagen.StudyContext(patient_id=f"PID-{n:04d}"), 1, 8),
                root / "files" / f"{n:04d}.dcm",
            )
            for n in range(ARCHIVE_STUDIES)
        ]
        results = store_files(server.host, server.port, paths)
        assert all(status == 0 for status, _ in results), results
        yield Archive(server, ARCHIVE_STUDIES)
    finally:
        server.stop()


def _study_query() -> bytes:
    """A study-level identifier matching every study (PS3.4 C.6.2.1), Implicit VR LE."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = ""
    identifier.StudyDate = ""
    return ep.encode(identifier, implicit=True)


def _find_association(
    archive: Archive, extra_user_items: bytes = b""
) -> tuple[ep.DimsePeer, bytes]:
    peer = ep.DimsePeer.connect(archive.server.host, archive.server.port)
    kind, body = peer.associate(
        ep.associate_rq(FIND_CONTEXTS, calling=b"CANCELLER", extra_user_items=extra_user_items)
    )
    if kind != 0x02 or fz.accepted_contexts(body).get(3) != 0:
        peer.close()
        raise AssertionError(f"Study Root FIND not accepted: {fz.PDU_NAMES.get(kind)} {body!r}")
    return peer, body


def test_c_cancel_in_the_same_write_as_its_c_find_is_acted_on(archive: Archive) -> None:
    """PS3.7 9.3.2.3: a C-CANCEL-RQ naming an outstanding C-FIND (Message ID Being Responded
    To) ends it with a final response of status 0xFE00 Cancel. Sent immediately after the
    C-FIND-RQ, in the same write, on each of CANCEL_ROUNDS associations: every one ends in
    0xFE00 (the C-FIND alone would match every one of the archive's studies)."""
    query = _study_query()
    finals: list[int] = []
    pendings: list[int] = []
    for round_number in range(CANCEL_ROUNDS):
        peer, _ = _find_association(archive)
        try:
            message_id = 100 + round_number
            peer.send(ep.find_rq(message_id, 3, query) + ep.cancel_rq(message_id, 3))
            finals.append(peer.wait_final([message_id])[message_id])
            pendings.append(len(peer.responses_to(message_id)) - 1)
            assert peer.release(), peer.summary()
        finally:
            peer.close()
    print(f"final statuses: {[f'0x{s:04X}' for s in finals]}; pending responses: {pendings}")
    assert finals == [0xFE00] * CANCEL_ROUNDS
    assert all(count < archive.studies for count in pendings), pendings


def test_asynchronous_operations_window_pipelines_requests(archive: Archive) -> None:
    """PS3.7 D.3.3.3: a policy granting async_operations_window 4 answers a proposed window
    (invoked 4, performed 1) with the sub-item (0x53) granting 4 invoked; then 4 C-ECHO-RQs
    sent in one write without waiting all get their C-ECHO-RSP, one per Message ID; and of
    3 C-FINDs outstanding at once, the one a C-CANCEL names ends 0xFE00 while the other two
    complete with 0x0000 after every match."""
    peer, accept = _find_association(archive, ep.async_window_item(WINDOW, 1))
    try:
        granted = ep.user_sub_items(accept).get(0x53)
        assert granted, f"no asynchronous operations window in the A-ASSOCIATE-AC: {accept!r}"
        invoked, performed = struct.unpack(">HH", granted[0])
        assert invoked == WINDOW, (invoked, performed)

        peer.send(b"".join(ep.echo_rq(message_id) for message_id in range(1, 5)))
        echoes = peer.wait_final(range(1, 5))
        echo_responses = [m for m in peer.messages if m.field == 0x8030]
        assert sorted(m.responded_to or 0 for m in echo_responses) == [1, 2, 3, 4]
        assert echoes == dict.fromkeys(range(1, 5), 0x0000)

        query = _study_query()
        finds = [11, 12, 13]
        peer.send(b"".join(ep.find_rq(i, 3, query) for i in finds) + ep.cancel_rq(12, 3))
        finals = peer.wait_final(finds, timeout=60.0)
        matches = {i: len(peer.responses_to(i)) - 1 for i in finds}
        assert peer.release(), peer.summary()
    finally:
        peer.close()
    print(f"C-FIND finals: { {i: f'0x{s:04X}' for i, s in finals.items()} }, matches {matches}")
    assert finals == {11: 0x0000, 12: 0xFE00, 13: 0x0000}
    assert matches[11] == matches[13] == archive.studies


# 8. Idle associations -------------------------------------------------------------------------


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _steady_threads(pid: int) -> int:
    """The process's thread count once it stops changing (bounded poll)."""
    previous = _threads(pid)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = _threads(pid)
        if current == previous:
            return current
        previous = current
    return previous


def test_idle_associations_cost_no_thread_each(pacsd_server: ServerFactory) -> None:
    """IDLE_ASSOCIATIONS established, idle associations (raw A-ASSOCIATE-RQs for
    Verification) grow the server process's thread count by fewer than THREAD_GROWTH_LIMIT,
    and every one of them still answers a C-ECHO."""
    server = pacsd_server(
        network={
            "max_associations": 200,
            "max_associations_per_address": 200,
            "max_pending_per_address": 200,
        }
    )
    assert server.process is not None
    pid = server.process.pid
    before = _steady_threads(pid)
    peers: list[ep.DimsePeer] = []
    try:
        for number in range(IDLE_ASSOCIATIONS):
            peer = ep.DimsePeer.connect(server.host, server.port)
            peers.append(peer)
            kind, body = peer.associate(ep.associate_rq(ECHO_CONTEXT, calling=b"IDLE"))
            assert kind == 0x02, f"association {number}: {fz.PDU_NAMES.get(kind)} {body!r}"
        during = _steady_threads(pid)
        print(f"threads: {before} before, {during} with {IDLE_ASSOCIATIONS} associations")
        assert during - before < THREAD_GROWTH_LIMIT, (before, during)
        for number, peer in enumerate(peers):
            peer.send(ep.echo_rq(1))
            assert peer.wait_final([1], timeout=10.0) == {1: 0x0000}, f"association {number}"
        for peer in peers:
            peer.peer.send(fz.RELEASE_RQ)
        released = [peer.release(timeout=10.0, send=False) for peer in peers]
        assert all(released), released.count(False)
    finally:
        for peer in peers:
            peer.close()
