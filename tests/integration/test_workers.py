"""Several worker processes on one port (network.workers), under one supervisor.

A real `pacsd serve` with two workers: both take associations (SO_REUSEPORT), every instance
stored by either is indexed exactly once in the shared index (SQLite and PostgreSQL), SIGTERM
stops them all, and a worker that dies takes the service down with a non-zero exit code
rather than leaving it running on fewer workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import datagen
from tests.harness import PacsdProcess, base_config
from tests.inspect_archive import assert_index_matches_files
from tests.scu import chunked_send, store_files

ServerFactory = Callable[..., PacsdProcess]
WORKERS = 2
ASSOCIATIONS = 16
PER_ASSOCIATION = 2
STOP_TIMEOUT_S = 60.0


def worker_pids(server: PacsdProcess) -> dict[int, int]:
    """Worker index -> process id, from the workers' "starting" lines."""
    return {
        int(line["worker"]): int(line["pid"])
        for line in server.events("starting")
        if line.get("worker") is not None
    }


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_workers(server: PacsdProcess) -> dict[int, int]:
    server.wait_for("listening", count=WORKERS)
    pids = worker_pids(server)
    assert sorted(pids) == list(range(WORKERS))
    return pids


@pytest.fixture
def workers(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(database_url, network={"workers": WORKERS})


def test_workers_share_the_port_and_index_every_instance_once(
    workers: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    wait_for_workers(workers)
    study = datagen.StudyContext()
    batches = [
        [
            datagen.write_part10(
                datagen.ct_image(study, number * PER_ASSOCIATION + item + 1),
                tmp_path / f"ct{number:02d}-{item}.dcm",
            )
            for item in range(PER_ASSOCIATION)
        ]
        for number in range(ASSOCIATIONS)
    ]
    results: list[list[tuple[int | None, str]]] = [[] for _ in batches]

    def send(position: int) -> None:
        results[position] = store_files(workers.host, workers.port, batches[position])

    with chunked_send():  # set once here: the flag is process-wide in pynetdicom
        threads = [threading.Thread(target=send, args=(n,)) for n in range(ASSOCIATIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STOP_TIMEOUT_S)
    assert all(status == 0x0000 for batch in results for status, _ in batch), results

    rows = assert_index_matches_files(database_url, workers.storage_root)
    assert len(rows) == ASSOCIATIONS * PER_ASSOCIATION
    accepted_by = {line.get("worker") for line in workers.accepted_associations(0)}
    assert set(range(WORKERS)) <= accepted_by  # the kernel spread them (2 x 2^-16 it did not)


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of process `pid`."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def store_over_associations(server: PacsdProcess, folder: Path, count: int) -> None:
    """`count` associations one after the other, one CT each (the workers' threads start)."""
    study = datagen.StudyContext()
    for number in range(count):
        path = datagen.write_part10(
            datagen.ct_image(study, number + 1, 64), folder / f"{number}.dcm"
        )
        assert store_files(server.host, server.port, [path]) == [(0x0000, "")]


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < WORKERS, reason="fewer CPUs than workers: none is pinned"
)
def test_each_worker_runs_on_a_cpu_of_its_own(workers: PacsdProcess, tmp_path: Path) -> None:
    """network.cpu_affinity auto (the default): worker i and every thread it starts stay on
    the i-th CPU the supervisor may use."""
    pids = wait_for_workers(workers)
    store_over_associations(workers, tmp_path, 6)
    allowed = sorted(os.sched_getaffinity(workers.process.pid))  # the supervisor: unpinned
    assert allowed == sorted(os.sched_getaffinity(0))
    for index, pid in pids.items():
        assert thread_cpus(pid) == {frozenset({allowed[index]})}, (index, pid)
    (started,) = workers.events("workers started")
    assert started["cpus"] == allowed[:WORKERS]


def test_cpu_affinity_none_leaves_the_workers_unpinned(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    server = pacsd_server(network={"workers": WORKERS, "cpu_affinity": "none"})
    pids = wait_for_workers(server)
    store_over_associations(server, tmp_path, 2)
    for pid in pids.values():
        assert thread_cpus(pid) == {frozenset(os.sched_getaffinity(0))}
    (started,) = server.events("workers started")
    assert started["cpus"] is None


def test_sigterm_stops_every_worker(workers: PacsdProcess) -> None:
    pids = wait_for_workers(workers)
    assert workers.stop(STOP_TIMEOUT_S) == 0
    assert not any(is_running(pid) for pid in pids.values())
    assert len(workers.events("stopped")) == WORKERS + 1  # the workers, then the supervisor


def test_a_worker_that_dies_stops_the_service_with_an_error(workers: PacsdProcess) -> None:
    pids = wait_for_workers(workers)
    os.kill(pids[1], signal.SIGKILL)
    assert workers.wait(STOP_TIMEOUT_S) == 1
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while is_running(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(pids[0])
    assert workers.events("a worker ended; stopping the others")


def test_workers_stop_when_the_supervisor_is_killed(workers: PacsdProcess) -> None:
    pids = wait_for_workers(workers)
    workers.kill()  # SIGKILL: the supervisor cannot forward anything
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(is_running(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(is_running(pid) for pid in pids.values())


def test_sigterm_while_workers_are_starting_is_a_clean_stop(tmp_path: Path) -> None:
    """A stop that reaches workers before they installed their handlers (they die of the
    SIGTERM, having accepted nothing) still ends the service with exit code 0."""
    config = base_config(tmp_path, network={"workers": 2})
    server = PacsdProcess.from_config(tmp_path, config)
    environment = {k: v for k, v in os.environ.items() if k != "PACSD_CONFIG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pacsd", "serve", "--config", str(server.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    for line in process.stdout:  # bounded: the process ends, or the deadline below fails
        if '"workers started"' in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)  # the workers are still importing pacsd
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert '"a worker ended; stopping the others"' not in output
