"""The engine's event loop on a real pacsd: associations are objects on one loop, not threads.

Timers still fire (ARTIM, network idle timeout), every association still works, nothing is
left behind (no thread per association, descriptors closed), and idle associations cost
(almost) no CPU.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from pynetdicom.association import Association

from tests.harness import VERIFICATION, PacsdProcess
from tests.scu import associate, status_of

ServerFactory = Callable[..., PacsdProcess]
IDLE_ASSOCIATIONS = 8
CPU_WINDOW_S = 2.0
# pynetdicom's polling costs 16 threads x 1000 wake-ups/s; waiting threads cost nothing.
MAX_IDLE_CPU_S = 0.25
SETTLE_TIMEOUT_S = 15.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(server: PacsdProcess) -> int:
    """Open descriptors but the index pool's (tests/harness.py: not a leak)."""
    return server.descriptors()[0]


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def pid_of(server: PacsdProcess) -> int:
    assert server.process is not None
    return server.process.pid


def echo_status(assoc: Association) -> int | None:
    return status_of(assoc.send_c_echo())


@pytest.fixture
def idle_associations(
    pacsd_server: ServerFactory,
) -> Iterator[tuple[PacsdProcess, list[Association]]]:
    server = pacsd_server()
    with ExitStack() as stack:
        associations = [
            stack.enter_context(
                associate(server.host, server.port, [(VERIFICATION, "1.2.840.10008.1.2")])
            )
            for _ in range(IDLE_ASSOCIATIONS)
        ]
        yield server, associations


def test_idle_associations_take_almost_no_cpu_and_still_answer(
    idle_associations: tuple[PacsdProcess, list[Association]],
) -> None:
    server, associations = idle_associations
    pid = pid_of(server)
    time.sleep(0.5)  # let the associations settle
    before = process_cpu_seconds(pid)
    time.sleep(CPU_WINDOW_S)
    used = process_cpu_seconds(pid) - before
    assert used < MAX_IDLE_CPU_S, f"{IDLE_ASSOCIATIONS} idle associations used {used:.2f} s CPU"
    assert [echo_status(assoc) for assoc in associations] == [0x0000] * IDLE_ASSOCIATIONS


def wait_until(condition: Callable[[], bool], timeout: float = SETTLE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_ended_associations_leave_no_thread_or_descriptor(pacsd_server: ServerFactory) -> None:
    server = pacsd_server()
    pid = pid_of(server)
    context = [(VERIFICATION, "1.2.840.10008.1.2")]
    time.sleep(1.0)  # the start-up C-ECHO's association has ended
    threads, descriptors = thread_count(pid), open_descriptors(server)

    for number in range(20):
        with associate(server.host, server.port, context) as assoc:
            assert echo_status(assoc) == 0x0000
            if number % 4 == 0:
                assoc.abort()
    with socket.create_connection((server.host, server.port), timeout=5) as raw:
        raw.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT before associating

    settled = wait_until(
        lambda: thread_count(pid) <= threads and open_descriptors(server) <= descriptors
    )
    assert settled, (
        f"threads {threads} -> {thread_count(pid)}, "
        f"descriptors {descriptors} -> {open_descriptors(server)}"
    )


def test_a_silent_connection_is_closed_by_the_artim_timer(pacsd_server: ServerFactory) -> None:
    server = pacsd_server(network={"acse_timeout": 1})
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(1024) == b""  # closed by pacsd, nothing sent
        assert time.monotonic() - started < 8
    with associate(server.host, server.port, [(VERIFICATION, "1.2.840.10008.1.2")]) as assoc:
        assert echo_status(assoc) == 0x0000


def test_an_idle_association_ends_at_the_network_timeout(pacsd_server: ServerFactory) -> None:
    server = pacsd_server(network={"network_timeout": 1})
    with associate(server.host, server.port, [(VERIFICATION, "1.2.840.10008.1.2")]) as assoc:
        assert echo_status(assoc) == 0x0000
        assert wait_until(lambda: not assoc.is_established, timeout=10)
        assert assoc.is_aborted
