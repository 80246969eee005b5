"""Goals 4 (per query) and 8 of issue 16: C-FIND per query on a small archive, and start-up.

C-FIND per query
    A small archive (benchmarks/query.py's plan, SmallFindOptions.instances instances of
    32x32x16 bits, five per study) is sent by storescu to a fresh pacsd and a fresh Orthanc
    (tests/perf/retrieval.py's `servers`: the same query settings as the retrieval goals).
    One association is opened to each and kept, by the raw-socket requester of
    tests/perf/find_client.py (not pynetdicom's: see there why); each run sends `queries`
    STUDY-level C-FIND requests back to back to one server, then to the other (which one goes
    first alternates between runs), each a PatientName wildcard "ABC*" matching a few studies,
    its answer compared with the plan. The figure is the median of every query's latency,
    client side, from the request sent to the final response; one query per server warms up
    first. A small archive makes the cost per message visible, not the cost per match.

Start-up
    Time from spawning the server process to the first C-ECHO answered: pacsd in its shipped
    configuration (`python -m pacsd serve`, network.workers as the run sets them) on a port
    chosen beforehand, Orthanc (benchmarks/orthanc.py's configuration). A thread polls every
    POLL_INTERVAL_S with a raw-socket client (tests/perf/associations.py): a new association
    and one C-ECHO per poll, so a refused connection costs microseconds, not an echoscu
    process. The time is taken when the C-ECHO-RSP arrives, before the release.
"""

from __future__ import annotations

import compileall
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset

import pacsd
from benchmarks import orthanc
from benchmarks.dcmtk import HOST, free_loopback_port
from benchmarks.ingest import PACSD_AE, stop_pacsd
from benchmarks.query import Study, find_identifier, plan, write_archive
from benchmarks.report import log_problems, percentile
from tests.harness import PacsdProcess, base_config
from tests.perf import retrieval
from tests.perf.associations import (
    RELEASE_RP,
    AssociationFailed,
    EncodedRequests,
    check_accepted,
    check_echo_response,
    read_pdu,
)
from tests.perf.find_client import FindClient, find_association
from tests.perf.goals import GoalRow, median

FIND_GOAL = "C-FIND per query, small archive, one association"
STARTUP_GOAL = "start-up to the first C-ECHO answered"
STARTUP_LIMIT_S = 0.5
START_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.01
POLL_SOCKET_TIMEOUT_S = 5.0
MAX_POLLS = 10_000
QUERY_BLOCK_S = 120.0  # at most, per server and run: the queries left are not sent
SERVERS = ("pacsd", "orthanc")


@dataclass(frozen=True)
class SmallFindOptions:
    """The per-query C-FIND measurement: archive size, queries per server and run, runs."""

    instances: int = 500
    queries: int = 200
    repeat: int = 3
    dcmtk: Path = Path("/usr/bin")
    keep: bool = False


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)


@contextmanager
def running_pacsd(
    run_dir: Path, config: dict[str, Any], problems: list[str], ready_by_echo: bool = True
) -> Iterator[PacsdProcess]:
    """A fresh pacsd for `config`; stopped by its pid at the end, its log kept in `run_dir`,
    a non-zero exit code and warning or error lines recorded in `problems`."""
    server = PacsdProcess.from_config(run_dir, config)
    try:
        server.start(START_TIMEOUT_S, ready_by_echo=ready_by_echo)
        yield server
    finally:
        exit_code = stop_pacsd(server)
        (run_dir / "pacsd.log").write_text(server.output() + "\n", encoding="utf-8")
        if exit_code != 0:
            problems.append(f"pacsd exit code {exit_code}")
        problems.extend(log_problems(server))


def fresh_folder(path: Path) -> Path:
    """`path`, emptied."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- C-FIND per query on a small archive ----------------------------------------------------


def find_queries(studies: Sequence[Study], count: int) -> list[tuple[Dataset, set[str]]]:
    """`count` PatientName wildcard queries cycling over the families of `studies`, each with
    the Study Instance UIDs it must return."""
    prefixes = sorted({study.patient_name[:3] for study in studies})
    queries: list[tuple[Dataset, set[str]]] = []
    for number in range(count):
        prefix = prefixes[number % len(prefixes)]
        expected = {s.study_uid for s in studies if s.patient_name.startswith(prefix)}
        queries.append((find_identifier(PatientName=f"{prefix}*"), expected))
    return queries


def send_queries(
    check: retrieval.Problems, client: FindClient, queries: Sequence[tuple[Dataset, set[str]]]
) -> list[float]:
    """The queries back to back on `client`'s association (within QUERY_BLOCK_S): each one's
    milliseconds, every answer checked."""
    deadline = time.monotonic() + QUERY_BLOCK_S
    latencies: list[float] = []
    for ds, expected in queries:
        if time.monotonic() > deadline:
            check.check(False, f"{len(latencies)} of {len(queries)} queries in {QUERY_BLOCK_S} s")
            break
        answer = client.find(ds)
        check.check(answer.status == 0x0000, f"C-FIND final status 0x{answer.status:04X}")
        check.check(
            answer.study_uids == expected, retrieval.mismatch(ds, answer.study_uids, expected)
        )
        latencies.append(answer.seconds * 1e3)
    return latencies


def query_latencies(bench: retrieval.Bench, options: SmallFindOptions) -> dict[str, list[float]]:
    """One association per server; `repeat` runs of `queries` queries to each server in turn."""
    queries = find_queries(bench.studies, options.queries)
    samples: dict[str, list[float]] = {target.name: [] for target in bench.targets}
    with ExitStack() as stack:
        clients = {
            target.name: stack.enter_context(find_association(target.port, target.ae_title))
            for target in bench.targets
        }
        for target in bench.targets:  # warm-up, not measured
            send_queries(bench.problems.about(target.name), clients[target.name], queries[:1])
        for run in range(options.repeat):
            for target in retrieval.alternate(bench.targets, run):
                check = bench.problems.about(f"{target.name} C-FIND per query, run {run + 1}")
                samples[target.name] += send_queries(check, clients[target.name], queries)
    return samples


def small_find_goals(work: Path, options: SmallFindOptions) -> tuple[list[GoalRow], list[str]]:
    """The archive into fresh pacsd and Orthanc, then the per-query latencies; (rows, problems)."""
    orthanc.ensure_installed()
    studies = plan(options.instances)
    files = write_archive(work / "inputs" / f"archive-{options.instances}", studies)
    run_dir = fresh_folder(work / "runs" / f"latency-find-{options.instances}")
    retrieve = retrieval.RetrievalOptions(dcmtk=options.dcmtk, keep=options.keep)
    problems = retrieval.Problems()
    with retrieval.servers(run_dir, retrieve, None) as targets:
        bench = retrieval.Bench(retrieve, problems, targets, run_dir, studies)
        for target in targets:
            progress(f"{target.name}: small archive of {len(files)} instances")
            retrieval.ingest_rate(bench, target, files, "small-archive")
        progress(f"C-FIND per query: {options.repeat} x {options.queries} queries per server")
        samples = query_latencies(bench, options)
    retrieval.tidy(run_dir, retrieve, problems)
    return [find_row(bench, options, samples)], problems.found


def find_row(
    bench: retrieval.Bench, options: SmallFindOptions, samples: dict[str, list[float]]
) -> GoalRow:
    """The median per-query latency of each server: pacsd's at most Orthanc's."""
    queries = find_queries(bench.studies, options.queries)
    matches = sum(len(expected) for _, expected in queries) / max(1, len(queries))
    p95 = ", ".join(
        f"{name} {percentile(values, 95):.2f} ms" for name, values in samples.items() if values
    )
    return GoalRow(
        goal=FIND_GOAL,
        unit="ms",
        pacsd=median(samples.get("pacsd", [])),
        peers={"orthanc": median(samples.get("orthanc", []))},
        higher_is_better=False,
        target_peer="orthanc",
        target_ratio=1.0,
        samples=samples,
        note=f"archive of {bench.size:,} instances ({len(bench.studies)} studies); "
        f"{options.repeat} run(s) of {options.queries} STUDY-level PatientName wildcard "
        f"queries back to back per server ({matches:.1f} matches each), one association "
        f"per server (raw-socket requester, Explicit VR LE), servers alternating; median of "
        f"every query, p95 {p95}",
    )


# -- start-up to the first C-ECHO answered --------------------------------------------------


def answered_echo(port: int, requests: EncodedRequests) -> float:
    """Open, C-ECHO, release: the time.monotonic() at which the C-ECHO-RSP (Success) arrived;
    raises OSError or AssociationFailed otherwise."""
    with socket.create_connection((HOST, port), timeout=POLL_SOCKET_TIMEOUT_S) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sendall(requests.associate)
        check_accepted(*read_pdu(connection))
        connection.sendall(requests.echo)
        check_echo_response(connection)
        answered = time.monotonic()
        connection.sendall(requests.release)
        pdu_type, _ = read_pdu(connection)
        if pdu_type != RELEASE_RP:
            raise AssociationFailed(f"PDU type 0x{pdu_type:02x} instead of A-RELEASE-RP")
    return answered


class EchoPoller:
    """A thread polling C-ECHO on `port` every POLL_INTERVAL_S from `started` until one is
    answered, the server is no longer `alive`, START_TIMEOUT_S passes or the block ends."""

    def __init__(
        self, port: int, ae_title: str, started: float, alive: Callable[[], bool] | None = None
    ) -> None:
        self.port = port
        self.requests = EncodedRequests.for_called(ae_title)
        self.started = started
        self.alive = alive or (lambda: True)
        self.answered: float | None = None
        self.polls = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> EchoPoller:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_SOCKET_TIMEOUT_S * 3)

    def _poll(self) -> None:
        deadline = self.started + START_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline and self.polls < MAX_POLLS:
            self.polls += 1
            try:
                self.answered = answered_echo(self.port, self.requests)
                return
            except (OSError, AssociationFailed) as exc:
                self.last_error = repr(exc)
            if not self.alive():
                return
            self._stop.wait(POLL_INTERVAL_S)

    def seconds(self) -> float | None:
        """Wait for the thread; seconds from `started` to the first answer (None: no answer)."""
        self._thread.join(timeout=max(0.0, self.started + START_TIMEOUT_S - time.monotonic()))
        return None if self.answered is None else self.answered - self.started


def byte_compile_pacsd() -> None:
    """Write pacsd's .pyc files, as installing its wheel does: a checkout run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile every module from source at each
    start (about 0.25 s of CPU time, a sixth of the start-up, on the 2-core test machine)."""
    compileall.compile_dir(Path(pacsd.__file__).parent, quiet=1)


def pacsd_startup(run_dir: Path, problems: list[str]) -> float | None:
    """pacsd (shipped configuration but a port chosen here, so the poll can start at once):
    seconds from spawn to the first C-ECHO answered."""
    port = free_loopback_port()
    config = base_config(run_dir, network={"port": port})
    started = time.monotonic()
    with (
        EchoPoller(port, PACSD_AE, started) as poller,
        running_pacsd(run_dir, config, problems, ready_by_echo=False),
    ):
        seconds = poller.seconds()
    if seconds is None:
        problems.append(f"no C-ECHO answer in {START_TIMEOUT_S:g} s: {poller.last_error}")
    return seconds


def orthanc_startup(run_dir: Path, problems: list[str]) -> float | None:
    """Orthanc: seconds from spawn to the first C-ECHO answered."""
    started = time.monotonic()
    server = orthanc.OrthancServer.launch(
        orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log"
    )

    def alive() -> bool:
        return server.process.poll() is None

    try:
        with EchoPoller(server.port, orthanc.ORTHANC_AE, started, alive) as poller:
            seconds = poller.seconds()
    finally:
        exit_code = server.stop()
    if seconds is None:
        problems.append(f"no C-ECHO answer in {START_TIMEOUT_S:g} s: {poller.last_error}")
    if exit_code not in (0, -15):
        problems.append(f"Orthanc exit code {exit_code}")
    return seconds


STARTERS: dict[str, Callable[[Path, list[str]], float | None]] = {
    "pacsd": pacsd_startup,
    "orthanc": orthanc_startup,
}


def startup_goals(work: Path, repeat: int, keep: bool) -> tuple[list[GoalRow], list[str]]:
    """`repeat` starts of each server, which one goes first alternating; (rows, problems)."""
    orthanc.ensure_installed()
    byte_compile_pacsd()
    samples: dict[str, list[float]] = {server: [] for server in SERVERS}
    problems: list[str] = []
    for run in range(repeat):
        for server in SERVERS if run % 2 == 0 else SERVERS[::-1]:
            run_dir = fresh_folder(work / "runs" / f"{server}-startup")
            run_problems: list[str] = []
            seconds = STARTERS[server](run_dir, run_problems)
            where = f"{STARTUP_GOAL}, {server}, run {run + 1}"
            problems.extend(f"{where}: {problem}" for problem in run_problems)
            if seconds is not None and not run_problems:
                samples[server].append(seconds)
                progress(f"{where}: {seconds:.3f} s")
                if not keep:  # a failed run's logs are saved at the end
                    shutil.rmtree(run_dir, ignore_errors=True)
    row = GoalRow(
        goal=STARTUP_GOAL,
        unit="s",
        pacsd=median(samples["pacsd"]),
        peers={"orthanc": median(samples["orthanc"])},
        higher_is_better=False,
        limit=STARTUP_LIMIT_S,
        samples=samples,
        note=f"from spawning the process (pacsd: `python -m pacsd serve`, its supervisor and "
        f"workers) to the first C-ECHO-RSP; a raw-socket client opens an association every "
        f"{POLL_INTERVAL_S * 1e3:g} ms; median of {repeat} start(s), pacsd byte-compiled "
        f"first as an installed wheel is; a new database each time; Orthanc for comparison",
    )
    return [row], problems
