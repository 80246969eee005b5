"""Goal 3 of issue 16: association rate (open, one C-ECHO, release), pacsd against Orthanc.

The client must not be the bottleneck, so it is not pynetdicom's AE nor one echoscu process per
association (~40 ms each): a raw-socket client sends an A-ASSOCIATE-RQ (Verification, Implicit
VR Little Endian) and a C-ECHO-RQ P-DATA-TF encoded once with pynetdicom's PDU classes, and
checks only what it must of each reply: the PDU type, the accepted presentation context (PS3.8
9.3.3.2, result 0), the C-ECHO status (PS3.7 9.3.5.2, 0x0000) and the A-RELEASE-RP. A failed
association is counted as a failure, not as a rate. CLIENT_PROCESSES processes of
THREADS_PER_PROCESS threads each loop until a shared deadline (and a count bound); the rate is
the successes over the time from the common start to the last association's end.
"""

from __future__ import annotations

import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dimse_messages import C_ECHO_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from benchmarks import orthanc
from benchmarks.dcmtk import HOST, REFERENCE_AE, ReferenceServer
from benchmarks.ingest import PACSD_AE, stop_pacsd
from benchmarks.report import log_problems
from tests.harness import PacsdProcess, base_config
from tests.perf.goals import GoalRow, median

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
CALLING_AE = "PERFECHO"
CONTEXT_ID = 1
MAX_PDU = 16384
CLIENT_PROCESSES = 2
THREADS_PER_PROCESS = 2
MAX_ASSOCIATIONS_PER_RUN = 20_000  # ephemeral ports: TIME_WAIT lasts 60 s
MAX_ASSOCIATIONS_PER_THREAD = MAX_ASSOCIATIONS_PER_RUN // (CLIENT_PROCESSES * THREADS_PER_PROCESS)
SOCKET_TIMEOUT_S = 10.0
START_DELAY_S = 0.3
WARM_UP_S = 0.5
# PDU types, PS3.8 9.3.1
ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RP, ABORT = 0x02, 0x03, 0x04, 0x06, 0x07
STATUS_TAG = b"\x00\x00\x00\x09\x02\x00\x00\x00"  # (0000,0900) Status, Implicit VR, length 2


class AssociationFailed(Exception):
    """A reply that is not the one a successful association gives."""


@dataclass(frozen=True)
class EncodedRequests:
    """The three PDUs a client sends, encoded once."""

    associate: bytes
    echo: bytes
    release: bytes

    @classmethod
    def for_called(cls, called_ae_title: str) -> EncodedRequests:
        """A-ASSOCIATE-RQ for Verification to `called_ae_title`, C-ECHO-RQ, A-RELEASE-RQ."""
        associate = associate_request(called_ae_title, VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)
        return cls(associate, _echo_request(), A_RELEASE_RQ().encode())


def associate_request(called_ae_title: str, abstract_syntax: str, transfer_syntax: str) -> bytes:
    """An A-ASSOCIATE-RQ to `called_ae_title` proposing one presentation context, CONTEXT_ID,
    for `abstract_syntax` in `transfer_syntax`; Maximum Length MAX_PDU."""
    context = PresentationContext()
    context.context_id = CONTEXT_ID
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = [transfer_syntax]
    maximum_length = MaximumLengthNotification()
    maximum_length.maximum_length_received = MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = CALLING_AE
    primitive.called_ae_title = called_ae_title
    primitive.presentation_context_definition_list = [context]
    primitive.user_information = [maximum_length, implementation]
    associate = A_ASSOCIATE_RQ()
    associate.from_primitive(primitive)
    return bytes(associate.encode())


def _echo_request() -> bytes:
    """C-ECHO-RQ, message ID 1, as P-DATA-TF PDUs on presentation context CONTEXT_ID."""
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    return encode_message(message)


def encode_message(message: DIMSEMessage) -> bytes:
    """A DIMSE message as P-DATA-TF PDUs on presentation context CONTEXT_ID."""
    encoded = b""
    for p_data in message.encode_msg(CONTEXT_ID, MAX_PDU):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        encoded += pdu.encode()
    return encoded


def read_pdu(connection: socket.socket) -> tuple[int, bytes]:
    """One PDU: its type and its body (PS3.8 9.3.1: type, reserved, 4-byte length)."""
    header = _read_exactly(connection, 6)
    pdu_type, length = header[0], struct.unpack(">I", header[2:6])[0]
    return pdu_type, _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    buffer = bytearray(count)
    view = memoryview(buffer)
    received = 0
    while received < count:
        chunk = connection.recv_into(view[received:])
        if chunk == 0:
            raise AssociationFailed("connection closed by the peer")
        received += chunk
    return bytes(buffer)


def check_accepted(pdu_type: int, body: bytes) -> None:
    """An A-ASSOCIATE-AC whose presentation context CONTEXT_ID was accepted (PS3.8 9.3.3)."""
    if pdu_type != ASSOCIATE_AC:
        raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of A-ASSOCIATE-AC")
    offset = 68  # protocol version, reserved, AE titles, reserved (PS3.8 Table 9-17)
    while offset + 4 <= len(body):
        item_type, length = body[offset], struct.unpack(">H", body[offset + 2 : offset + 4])[0]
        if item_type == 0x21 and body[offset + 4] == CONTEXT_ID:  # PS3.8 Table 9-18
            if body[offset + 6] != 0:
                raise AssociationFailed(f"presentation context result {body[offset + 6]}")
            return
        offset += 4 + length
    raise AssociationFailed("no presentation context item for the proposed context")


def check_echo_response(connection: socket.socket) -> None:
    """Read P-DATA-TF PDUs up to the last command fragment; its Status must be 0x0000."""
    command = b""
    while True:
        pdu_type, body = read_pdu(connection)
        if pdu_type != P_DATA:
            raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of P-DATA-TF")
        last = False
        offset = 0
        while offset + 6 <= len(body):  # PDV items, PS3.8 9.3.5.1 and Annex E.2
            length = struct.unpack(">I", body[offset : offset + 4])[0]
            control = body[offset + 5]
            command += body[offset + 6 : offset + 4 + length]
            last = last or (control & 0x03) == 0x03  # a command's last fragment
            offset += 4 + length
        if last:
            break
    position = command.find(STATUS_TAG)
    if position < 0:
        raise AssociationFailed("C-ECHO-RSP without a Status")
    status = struct.unpack("<H", command[position + 8 : position + 10])[0]
    if status != 0x0000:
        raise AssociationFailed(f"C-ECHO status 0x{status:04x}")


def one_association(port: int, requests: EncodedRequests) -> None:
    """Open, C-ECHO, release, close; raises AssociationFailed on any unexpected reply."""
    with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sendall(requests.associate)
        check_accepted(*read_pdu(connection))
        connection.sendall(requests.echo)
        check_echo_response(connection)
        connection.sendall(requests.release)
        pdu_type, _ = read_pdu(connection)
        if pdu_type != RELEASE_RP:
            raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of A-RELEASE-RP")


@dataclass
class LoopResult:
    """What one client thread or process did."""

    successes: int = 0
    failures: int = 0
    first_failure: str = ""
    finished: float = 0.0  # time.monotonic() after the last association

    def add(self, other: LoopResult) -> None:
        """Fold `other` into this result."""
        self.successes += other.successes
        self.failures += other.failures
        self.first_failure = self.first_failure or other.first_failure
        self.finished = max(self.finished, other.finished)


def association_loop(port: int, called_ae_title: str, start: float, stop: float) -> LoopResult:
    """Associations back to back from `start` to `stop` (time.monotonic), count-bounded."""
    requests = EncodedRequests.for_called(called_ae_title)
    result = LoopResult()
    time.sleep(max(0.0, start - time.monotonic()))
    while time.monotonic() < stop and result.successes < MAX_ASSOCIATIONS_PER_THREAD:
        try:
            one_association(port, requests)
            result.successes += 1
        except (OSError, AssociationFailed) as exc:
            result.failures += 1
            result.first_failure = result.first_failure or repr(exc)
            if result.failures > MAX_ASSOCIATIONS_PER_THREAD // 10:
                break
    result.finished = time.monotonic()
    return result


def client_process(port: int, called_ae_title: str, start: float, stop: float) -> LoopResult:
    """THREADS_PER_PROCESS association loops in one process."""
    results = [LoopResult() for _ in range(THREADS_PER_PROCESS)]

    def run(index: int) -> None:
        results[index] = association_loop(port, called_ae_title, start, stop)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = LoopResult()
    for result in results:
        total.add(result)
    return total


def _ready() -> bool:
    time.sleep(WARM_UP_S)  # busy long enough that each worker takes one of these
    return True


@contextmanager
def client_pool() -> Iterator[ProcessPoolExecutor]:
    """CLIENT_PROCESSES client processes, started and warm (modules imported)."""
    context = get_context("spawn")  # no fork of a process that runs threads
    with ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=context) as pool:
        for warm in [pool.submit(_ready) for _ in range(CLIENT_PROCESSES)]:
            warm.result(timeout=60)
        yield pool


def measure_rate(
    pool: ProcessPoolExecutor, port: int, called_ae_title: str, seconds: float
) -> tuple[float, LoopResult]:
    """Associations/s of every client loop together for `seconds`, and what they did."""
    start = time.monotonic() + START_DELAY_S
    stop = start + seconds
    futures = [
        pool.submit(client_process, port, called_ae_title, start, stop)
        for _ in range(CLIENT_PROCESSES)
    ]
    total = LoopResult()
    for future in futures:
        total.add(future.result(timeout=seconds + 120))
    elapsed = max(total.finished - start, 1e-9)
    return total.successes / elapsed, total


@contextmanager
def pacsd_server(run_dir: Path, problems: list[str]) -> Iterator[tuple[int, str]]:
    """A fresh pacsd (default configuration): its port and AE title."""
    server = PacsdProcess.from_config(run_dir, base_config(run_dir))
    try:
        server.start()
        yield server.port, PACSD_AE
    finally:
        exit_code = stop_pacsd(server)
        (run_dir / "pacsd.log").write_text(server.output() + "\n", encoding="utf-8")
        if exit_code != 0:
            problems.append(f"pacsd exit code {exit_code}")
        problems.extend(log_problems(server))


@contextmanager
def storescp_server(storescp: Path, run_dir: Path) -> Iterator[tuple[int, str]]:
    """A fresh DCMTK storescp (--fork: one process per association)."""
    received = run_dir / "received"
    received.mkdir(parents=True, exist_ok=True)
    server = ReferenceServer.start(storescp, received, run_dir / "storescp.log")
    try:
        yield server.port, REFERENCE_AE
    finally:
        server.stop()


@contextmanager
def orthanc_server(run_dir: Path) -> Iterator[tuple[int, str]]:
    """A fresh Orthanc with an empty archive."""
    server = orthanc.OrthancServer.start(
        orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log"
    )
    try:
        yield server.port, orthanc.ORTHANC_AE
    finally:
        server.stop()


SERVERS = ("pacsd", "storescp", "orthanc")
GOAL = "association rate (open, C-ECHO, release)"


@contextmanager
def started(
    server: str, run_dir: Path, storescp: Path, problems: list[str]
) -> Iterator[tuple[int, str]]:
    """Start `server` in `run_dir` for one measurement: its port and AE title."""
    if server == "pacsd":
        with pacsd_server(run_dir, problems) as address:
            yield address
    elif server == "storescp":
        with storescp_server(storescp, run_dir) as address:
            yield address
    else:
        with orthanc_server(run_dir) as address:
            yield address


def association_goals(
    work: Path, storescp: Path, repeat: int, seconds: float, keep: bool
) -> tuple[list[GoalRow], list[str]]:
    """pacsd, storescp and Orthanc in turn, `repeat` times: the median associations/s."""
    samples: dict[str, list[float]] = {server: [] for server in SERVERS}
    problems: list[str] = []
    with client_pool() as pool:
        for repetition in range(1, repeat + 1):
            for server in SERVERS:
                run_dir = work / "runs" / f"{server}-associations"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                rate, run_problems = one_run(pool, server, run_dir, storescp, seconds)
                where = f"{GOAL}, {server}, run {repetition}"
                problems.extend(f"{where}: {problem}" for problem in run_problems)
                if not run_problems:
                    samples[server].append(rate)
                    if not keep:  # a failed run's logs are saved at the end
                        shutil.rmtree(run_dir, ignore_errors=True)
    row = GoalRow(
        goal=GOAL,
        unit="assoc/s",
        pacsd=median(samples["pacsd"]),
        peers={peer: median(samples[peer]) for peer in SERVERS[1:]},
        target_peer="orthanc",
        target_ratio=1.0,
        samples=samples,
        note=f"{CLIENT_PROCESSES} processes x {THREADS_PER_PROCESS} threads of a raw-socket "
        f"client for {seconds:g} s; storescp forks a process per association",
    )
    return [row], problems


def one_run(
    pool: ProcessPoolExecutor, server: str, run_dir: Path, storescp: Path, seconds: float
) -> tuple[float, list[str]]:
    """A fresh `server`, the clients for `seconds`: associations/s and problems."""
    problems: list[str] = []
    with started(server, run_dir, storescp, problems) as (port, ae_title):
        rate, result = measure_rate(pool, port, ae_title, seconds)
    progress(f"{server}: {rate:,.0f} associations/s ({result.successes} in {seconds:g} s)")
    if result.failures:
        problems.append(f"{result.failures} failed associations, first: {result.first_failure}")
    return rate, problems


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)
