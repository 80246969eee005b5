"""CPU cost of pacsd, measured so that the load of a shared machine matters little (issue 16).

The rates of `python -m tests.perf` are wall-clock figures: on a machine shared with other work
they move by tens of percent from run to run. This tool reads the CPU time the kernel charged
to pacsd's own processes (utime + stime of /proc/<pid>/stat, the supervisor and its workers):

- `associations`: CPU microseconds per association (open, C-ECHO, release), over `--count`
  associations driven one after the other by the raw-socket client of associations.py, after
  a warm-up, the server started as the benchmark starts it (a new database, HTTP on).
- `start-up`: seconds from spawn to the first C-ECHO answered, and the CPU time the process
  tree had used by then (a new database: the case the start-up row measures).
- `ingest`: CPU milliseconds per instance stored, `--count` CT instances of `--size` pixels
  square sent by one DCMTK storescu association (after a warm-up association of 100).

`--pythonpath DIR` runs another copy of the server package (e.g. `git archive HEAD server`
unpacked, DIR its server/ folder) with the same client, for before/after figures side by
side; both are byte-compiled first, as installed wheels are. For
instruction counts instead of time, run the server under `valgrind --tool=callgrind
--instr-atstart=no` and switch instrumentation on and off around the same client loop
(`callgrind_control -i on|off`).

    python -m tests.perf.cpu_cost associations --count 3000 --workers 1
    python -m tests.perf.cpu_cost start-up --repeat 3 --workers 2
    python -m tests.perf.cpu_cost ingest --count 1000 --size 64
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pacsd
from benchmarks.dcmtk import run_storescu
from tests.datagen import StudyContext, ct_series
from tests.harness import PacsdProcess, base_config
from tests.perf.associations import EncodedRequests, one_association
from tests.perf.latency import EchoPoller

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_ASSOCIATIONS = 300
WARM_UP_INSTANCES = 100
STORESCU_TIMEOUT_S = 600.0
SETTLE_S = 0.5


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (pacsd's workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            pids.append(int(entry))
    return pids


def tree_cpu(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds summed over `pids`."""
    times = [cpu_seconds(pid) for pid in pids]
    return sum(user for user, _ in times), sum(system for _, system in times)


def cpu_per(
    before: tuple[float, float], after: tuple[float, float], count: int, scale: float
) -> tuple[float, float]:
    """(user, system) CPU between two `tree_cpu` readings, per one of `count`, times `scale`."""
    return (scale * (after[0] - before[0]) / count, scale * (after[1] - before[1]) / count)


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server(folder: Path, workers: int, pythonpath: str | None, port: int = 0) -> PacsdProcess:
    """A pacsd to measure (not started), in a fresh `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    config = base_config(folder, network={"host": "127.0.0.1", "port": port, "workers": workers})
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    return PacsdProcess.from_config(folder, config, **env)


def associations(work: Path, count: int, workers: int, pythonpath: str | None) -> None:
    """Print the server's CPU time per association."""
    pacsd = server(work / "associations", workers, pythonpath).start()
    try:
        assert pacsd.process is not None
        requests = EncodedRequests.for_called("PACSD")
        for _ in range(WARM_UP_ASSOCIATIONS):
            one_association(pacsd.port, requests)
        time.sleep(SETTLE_S)
        pids = process_tree(pacsd.process.pid)
        before = tree_cpu(pids)
        started = time.monotonic()
        for _ in range(count):
            one_association(pacsd.port, requests)
        wall = time.monotonic() - started
        after = tree_cpu(pids)
    finally:
        pacsd.stop()
    user_us, system_us = cpu_per(before, after, count, 1e6)
    print(
        f"associations: {count} one after the other, workers={workers}: server CPU "
        f"{user_us + system_us:.0f} us per association (user {user_us:.0f}, system "
        f"{system_us:.0f}); wall {wall:.2f} s"
    )


def start_up(work: Path, repeat: int, workers: int, pythonpath: str | None) -> None:
    """Print, per start, the time to the first C-ECHO answered and the CPU used by then."""
    for run in range(1, repeat + 1):
        port = free_port()
        pacsd = server(work / "start-up", workers, pythonpath, port)
        started = time.monotonic()
        with EchoPoller(port, "PACSD", started) as poller:
            pacsd.start(ready_by_echo=False)
            seconds = poller.seconds()
            assert pacsd.process is not None
            user, system = tree_cpu(process_tree(pacsd.process.pid))
        pacsd.stop()
        answered = "no answer" if seconds is None else f"{seconds:.3f} s"
        print(
            f"start-up {run}, workers={workers}: first C-ECHO {answered}; CPU of the process "
            f"tree by then {user + system:.2f} s (user {user:.2f}, system {system:.2f})"
        )


def ingest(work: Path, count: int, size: int, workers: int, pythonpath: str | None) -> None:
    """Print the server's CPU time per instance received over one storescu association."""
    inputs = work / "inputs"
    files = list(ct_series(inputs, WARM_UP_INSTANCES + count, size, StudyContext()))
    pacsd = server(work / "ingest", workers, pythonpath).start()
    try:
        assert pacsd.process is not None
        warm = run_storescu(
            Path("storescu"),
            "PACSD",
            pacsd.port,
            [files[:WARM_UP_INSTANCES]],
            work,
            STORESCU_TIMEOUT_S,
        )
        assert warm.successes == WARM_UP_INSTANCES, warm
        time.sleep(SETTLE_S)
        pids = process_tree(pacsd.process.pid)
        before = tree_cpu(pids)
        run = run_storescu(
            Path("storescu"),
            "PACSD",
            pacsd.port,
            [files[WARM_UP_INSTANCES:]],
            work,
            STORESCU_TIMEOUT_S,
        )
        after = tree_cpu(pids)
    finally:
        pacsd.stop()
    assert run.successes == count, run
    user_ms, system_ms = cpu_per(before, after, count, 1e3)
    print(
        f"ingest: {count} CT {size}x{size} over one association, workers={workers}: server CPU "
        f"{user_ms + system_ms:.2f} ms per instance (user {user_ms:.2f}, system "
        f"{system_ms:.2f}); {count / run.seconds:.0f} instances/s"
    )


def main() -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("associations", "start-up", "ingest"))
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pythonpath", default=None)
    args = parser.parse_args()
    # Both copies byte-compiled, as installed wheels are (see latency.byte_compile_pacsd).
    compileall.compile_dir(args.pythonpath or Path(pacsd.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="pacsd-cpu-") as folder:
        if args.what == "associations":
            associations(Path(folder), args.count, args.workers, args.pythonpath)
        elif args.what == "ingest":
            ingest(Path(folder), args.count, args.size, args.workers, args.pythonpath)
        else:
            start_up(Path(folder), args.repeat, args.workers, args.pythonpath)


if __name__ == "__main__":
    main()
