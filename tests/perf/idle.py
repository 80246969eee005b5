"""Goal 7 of issue 16: what open idle associations cost, in CPU and threads.

A fresh pacsd (shipped configuration, network.workers as the run sets them) with
network.max_associations and network.max_pending_per_address raised to NETWORK_LIMIT, so that
`count` associations from 127.0.0.1 are allowed (defaults 32 per worker and 16), and, for
comparison only, a fresh Orthanc (benchmarks/orthanc.py's configuration). For each:

1. SETTLE_S after start-up, the threads of the process tree are counted and its CPU time is
   measured over `seconds` with no association (the baseline);
2. `count` associations are opened one after the other by a raw-socket client: an
   A-ASSOCIATE-RQ for Verification (tests/perf/associations.py), the A-ASSOCIATE-AC checked,
   then nothing more is sent;
3. SETTLE_S later the threads are counted again and the CPU time measured over `seconds`;
4. every association must still be open (nothing received on it, the connection not closed:
   otherwise it is a problem, the figure not valid); pacsd's are then released (a release
   not answered is a problem), Orthanc's aborted (see ORTHANC_ABORTED).

CPU time is utime + stime of /proc/<pid>/stat summed over the server process and its
descendants (tests/perf/memory.py's `process_tree`: pacsd's supervisor and workers), in clock
ticks (SC_CLK_TCK, 10 ms usually: over 5 s one tick is 0.2 % of a core); the figure is that
time over the wall time, in % of one core. Threads are the Threads: lines of
/proc/<pid>/status, summed the same way. A growth of `count` threads or more means a thread per
association: the goal ("no thread each") is then not met, whatever the CPU figure.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from benchmarks import orthanc
from benchmarks.dcmtk import HOST
from benchmarks.ingest import PACSD_AE
from tests.harness import base_config
from tests.perf.associations import (
    RELEASE_RP,
    AssociationFailed,
    EncodedRequests,
    check_accepted,
    read_pdu,
)
from tests.perf.goals import GoalRow, median
from tests.perf.latency import fresh_folder, running_pacsd
from tests.perf.memory import process_tree, status_kb

SERVERS = ("pacsd", "orthanc")
SETTLE_S = 1.0
CPU_LIMIT_PERCENT = 1.0
NETWORK_LIMIT = 200
NETWORK = {"max_associations": NETWORK_LIMIT, "max_pending_per_address": NETWORK_LIMIT}
MAX_ASSOCIATIONS = NETWORK_LIMIT  # the most this measurement opens
SOCKET_TIMEOUT_S = 10.0
ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT, service-user (PS3.8 9.3.8)
ORTHANC_ABORTED = (
    "Orthanc's associations are aborted at the end, pacsd's released: Orthanc answers the "
    "releases of many idle associations slowly (in a trial, 96 of 100 not within 20 s)"
)
RELEASE_TIMEOUT_S = 20.0  # for every release together
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A running server: the pid at the root of its process tree, its port and AE title."""

    pid: int
    port: int
    ae_title: str


@dataclass(frozen=True)
class IdleFigures:
    """One run of one server: CPU % of one core without and with the associations, threads."""

    baseline: float
    loaded: float
    threads_before: int
    threads_after: int

    @property
    def growth(self) -> int:
        """Threads added while the associations were open."""
        return self.threads_after - self.threads_before


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of `pid` in clock ticks (proc(5): fields 14 and 15), None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> dict[int, int]:
    """CPU ticks of every process of the tree rooted at `pid`."""
    ticks = {member: cpu_ticks(member) for member in process_tree(pid)}
    return {member: value for member, value in ticks.items() if value is not None}


def tree_threads(pid: int) -> int:
    """Threads of every process of the tree rooted at `pid`."""
    return sum(status_kb(member, "Threads") or 0 for member in process_tree(pid))


def cpu_percent(pid: int, seconds: float) -> float:
    """CPU time of the tree over `seconds` of wall time, in % of one core (a process that
    appears meanwhile counts from zero; one that ends loses its last ticks)."""
    before, started = tree_ticks(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = tree_ticks(pid), time.monotonic() - started
    used = sum(value - before.get(member, 0) for member, value in after.items())
    return used / CLOCK_TICKS / elapsed * 100


def open_idle(port: int, requests: EncodedRequests, count: int) -> list[socket.socket]:
    """`count` associations accepted by the server, one after the other (closed again if one
    fails, the failure raised)."""
    opened: list[socket.socket] = []
    try:
        for _ in range(min(count, MAX_ASSOCIATIONS)):
            connection = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S)
            opened.append(connection)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.sendall(requests.associate)
            check_accepted(*read_pdu(connection))
    except BaseException:
        for connection in opened:
            connection.close()
        raise
    return opened


def still_open(connection: socket.socket) -> bool:
    """Nothing received and not closed by the server: the socket is not readable (readable
    means the end of the stream, or a PDU the server sent: A-ABORT, A-RELEASE-RQ)."""
    readable, _, _ = select.select([connection], [], [], 0)
    return not readable


def release_all(connections: list[socket.socket], requests: EncodedRequests) -> str:
    """A-RELEASE-RQ on every connection first, then each A-RELEASE-RP awaited within
    RELEASE_TIMEOUT_S in all; every connection closed. What failed, "" when nothing did."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    failed, first = 0, ""
    try:
        for connection in connections:
            try:
                connection.sendall(requests.release)
            except OSError as exc:
                failed, first = failed + 1, first or repr(exc)
        for connection in connections:
            try:
                connection.settimeout(max(0.01, deadline - time.monotonic()))
                pdu_type, _ = read_pdu(connection)
                if pdu_type != RELEASE_RP:
                    raise AssociationFailed(f"PDU type 0x{pdu_type:02x}, not A-RELEASE-RP")
            except (OSError, AssociationFailed) as exc:
                failed, first = failed + 1, first or repr(exc)
    finally:
        for connection in connections:
            connection.close()
    return f"{failed} of {len(connections)} releases failed, first: {first}" if failed else ""


def abort_all(connections: list[socket.socket]) -> None:
    """A-ABORT on every connection, then close it (errors ignored: the peer may be gone)."""
    for connection in connections:
        with suppress(OSError):
            connection.sendall(ABORT)
        connection.close()


def measure(
    server: Server, count: int, seconds: float, release: bool, problems: list[str]
) -> IdleFigures:
    """Baseline, then `count` idle associations; at the end they are released (a failure is
    a problem) or aborted."""
    time.sleep(SETTLE_S)
    threads_before = tree_threads(server.pid)
    baseline = cpu_percent(server.pid, seconds)
    requests = EncodedRequests.for_called(server.ae_title)
    connections = open_idle(server.port, requests, count)
    try:
        time.sleep(SETTLE_S)
        threads_after = tree_threads(server.pid)
        loaded = cpu_percent(server.pid, seconds)
        threads_after = max(threads_after, tree_threads(server.pid))
        closed = sum(not still_open(connection) for connection in connections)
        if closed:
            problems.append(f"{closed} of {count} idle associations ended by the server")
    except BaseException:
        abort_all(connections)
        raise
    if not release:
        abort_all(connections)
    elif failed := release_all(connections, requests):
        problems.append(failed)
    return IdleFigures(baseline, loaded, threads_before, threads_after)


@contextmanager
def started(name: str, run_dir: Path, problems: list[str]) -> Iterator[Server]:
    """A fresh server `name`: its pid, port and AE title."""
    if name == "pacsd":
        config = base_config(run_dir, network=NETWORK)
        with running_pacsd(run_dir, config, problems) as pacsd:
            assert pacsd.process is not None
            yield Server(pacsd.process.pid, pacsd.port, PACSD_AE)
        return
    reference = orthanc.OrthancServer.start(
        orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log"
    )
    try:
        yield Server(reference.process.pid, reference.port, orthanc.ORTHANC_AE)
    finally:
        exit_code = reference.stop()
        if exit_code not in (0, -15):
            problems.append(f"Orthanc exit code {exit_code}")


def idle_goals(
    work: Path, count: int, seconds: float, repeat: int, keep: bool
) -> tuple[list[GoalRow], list[str]]:
    """`repeat` runs of each server, which one goes first alternating; (rows, problems)."""
    orthanc.ensure_installed()
    runs: dict[str, list[IdleFigures]] = {server: [] for server in SERVERS}
    problems: list[str] = []
    for run in range(repeat):
        for server in SERVERS if run % 2 == 0 else SERVERS[::-1]:
            run_dir = fresh_folder(work / "runs" / f"{server}-idle")
            run_problems: list[str] = []
            try:
                with started(server, run_dir, run_problems) as running:
                    release = server == "pacsd"  # Orthanc: see ORTHANC_ABORTED
                    figures = measure(running, count, seconds, release, run_problems)
            except (OSError, AssociationFailed, RuntimeError) as exc:
                run_problems.append(f"stopped by {exc!r}")
            where = f"idle associations, {server}, run {run + 1}"
            problems.extend(f"{where}: {problem}" for problem in run_problems)
            if run_problems:
                continue
            runs[server].append(figures)
            progress(
                f"{where}: {figures.baseline:.2f} % -> {figures.loaded:.2f} % of a core, "
                f"threads {figures.threads_before} -> {figures.threads_after}"
            )
            if not keep:  # a failed run's logs are saved at the end
                shutil.rmtree(run_dir, ignore_errors=True)
    return [idle_row(runs, count, seconds)], problems


def threads_text(figures: list[IdleFigures]) -> str:
    """Threads before -> after of the run that added the most, "-" when not measured."""
    if not figures:
        return "-"
    most = max(figures, key=lambda found: found.growth)
    return f"{most.threads_before} -> {most.threads_after}"


def idle_row(runs: dict[str, list[IdleFigures]], count: int, seconds: float) -> GoalRow:
    """CPU % with `count` idle associations open, against the absolute limit; a thread per
    association makes the goal unmet."""
    loaded = {server: [figures.loaded for figures in runs[server]] for server in SERVERS}
    baseline = {server: median([f.baseline for f in runs[server]]) for server in SERVERS}
    growth = max((figures.growth for figures in runs["pacsd"]), default=0)
    unmet = ""
    if growth >= count:
        unmet = f"pacsd's process tree gained {growth} threads for {count} associations"
    without = ", ".join(
        f"{server} {'-' if value is None else f'{value:.2f}'} %"
        for server, value in baseline.items()
    )
    note = (
        f"CPU time (utime+stime) of the whole process tree over {seconds:g} s, {SETTLE_S:g} s "
        f"after opening {count} Verification associations from 127.0.0.1 (raw A-ASSOCIATE-RQ, "
        f"then silence); without them: {without}; threads before -> after: pacsd "
        f"{threads_text(runs['pacsd'])}, orthanc {threads_text(runs['orthanc'])}; pacsd ran "
        f"with network.max_associations and max_pending_per_address {NETWORK_LIMIT} "
        "(defaults 32 per worker and 16) to allow them from one address; Orthanc for comparison"
    )
    note += f"; {ORTHANC_ABORTED}"
    if unmet:
        note += f"; NOT MET: {unmet} (a thread per association)"
    return GoalRow(
        goal=f"idle: {count} open idle associations, CPU % of one core",
        unit="% core",
        pacsd=median(loaded["pacsd"]),
        peers={"orthanc": median(loaded["orthanc"])},
        higher_is_better=False,
        limit=CPU_LIMIT_PERCENT,
        samples=loaded,
        note=note,
        unmet=unmet,
    )
