"""Several worker processes on one DICOM port (`network.workers` > 1), under one supervisor.

One Python process runs its DICOM work under one GIL, so it uses one core however many
associations it serves. With `network.workers: N`, `pacsd serve` becomes a supervisor that
prepares the archive once (schema, leftovers of an interrupted run), opens the listening
sockets and forks N workers. They inherit the sockets and take connections from the one
accept queue (engine/listeners.py), and they share the memory the supervisor filled before
the fork (modules, dictionaries) until either writes to it. The index keeps them consistent:
PostgreSQL as usual; SQLite in WAL mode, where the writers of all processes queue on one lock
file (index/database.py), so every commit stays atomic and durable.

What stays with worker 0: the HTTP interface (its /associations shows worker 0's
associations; its /metrics adds up every worker's metric files, pacsd.http.launch) and the
Storage Commitment worker, which reads pending requests from the database and so reports on
those received by any worker (on a new association when the request came to another one).
Association limits (`network.max_associations`, a policy's `max_associations`) hold per worker.

With `network.cpu_affinity: auto` (the default) and no more workers than CPUs, each worker
pins itself to a CPU of its own (`worker_cpus`) before it starts any thread. A worker's
threads run one at a time anyway (one GIL), and every hand-over between them (the event loop
to an executor thread and back, twice per C-FIND or C-STORE) is a thread wake-up: on one CPU it
took half as long as across two (a loop-to-executor round trip 37 against 80 us on the
2-core test machine), with no cache lines crossing. Measured on a full pacsd, pinned against
unpinned, workers=2, alternated rounds: C-FIND per query 0.92x the time, C-STORE 64x64 1.09x
and 0.5 MB 1.09x (one association) and 1.0x and 1.24x (eight), associations/s 1.04x. With more
workers than CPUs the kernel balances them better than a fixed map; a single process keeps
every CPU for the work it does without the GIL (SQLite, hashing, fsync).

The supervisor forwards SIGTERM/SIGINT (graceful, then forced) and SIGHUP (reload) to the
workers. When a worker ends on its own, the supervisor stops the others and exits 1, so that
systemd or Docker restarts the whole service rather than running with fewer workers unseen.
A worker follows its supervisor's death (prctl PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from pacsd.engine.listeners import Listeners
from pacsd.logs import get_logger
from pacsd.settings import Settings
from pacsd.signals import Signals

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.2
STOP_MARGIN_S = 15.0  # beyond the workers' own grace period, before they are killed
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = get_logger("pacsd.workers")
Worker = Callable[[int], int]


def stop_with_supervisor() -> None:
    """In a worker: have the kernel send SIGTERM when the supervisor dies (even by SIGKILL),
    so that no worker is left holding the port without it (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot follow the supervisor's death", errno=ctypes.get_errno())
    if os.getppid() == 1:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(
    settings: Settings,
    listeners: Listeners,
    run_worker: Worker,
    worker_ended: Callable[[int], None] | None = None,
    other_sockets: Sequence[socket.socket] = (),
) -> int:
    """Fork `settings.network.workers` workers, each running `run_worker(index)` on the
    shared `listeners`, and watch them until a signal stops them; the exit code.
    `worker_ended(pid)` is called once for each worker that has ended; `other_sockets` (the
    HTTP socket, which worker 0 serves) are closed here after the fork, like the listeners."""
    network = settings.network
    signals = Signals()
    signals.install()
    sys.stdout.flush()  # nothing buffered is written twice
    # What the workers inherit stays out of every collector's sight (Python's gc.freeze
    # advice for fork without exec): a collection writes to each object it visits, and in the
    # supervisor that copied every page it shared with the workers (49 MB of its own, idle).
    gc.freeze()
    cpus = worker_cpus(network.workers, network.cpu_affinity, os.sched_getaffinity(0))
    pids = [_fork(index, run_worker, cpus[index]) for index in range(network.workers)]
    log.info(
        "workers started",
        workers=len(pids),
        host=listeners.host,
        port=listeners.port,
        tls_port=listeners.tls_port,
        cpus=cpus if any(cpu is not None for cpu in cpus) else None,
    )
    listeners.close()  # the workers accept; the supervisor's copies would only linger
    gc.enable()  # off while the command started (pacsd.__main__); each worker's own is too
    for sock in other_sockets:
        sock.close()
    code = _watch(pids, signals, settings.daemon.shutdown_grace_period, worker_ended)
    log.info("workers stopped", exit_code=code)
    return code


def worker_cpus(workers: int, affinity: str, allowed: Iterable[int]) -> list[int | None]:
    """The CPU each worker pins itself to (None: not pinned): with `affinity` auto, several
    workers and at least as many `allowed` CPUs (the supervisor's own affinity: a container's
    cpuset, a systemd CPUAffinity), worker i takes the i-th of them."""
    usable = sorted(allowed)
    if affinity != "auto" or workers < 2 or workers > len(usable):
        return [None] * workers
    return [*usable[:workers]]


def _pin(index: int, cpu: int | None) -> None:
    """In a worker, before it starts a thread (its threads inherit the mask)."""
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a CPU gone offline since: the worker runs unpinned
        log.warning("cannot pin the worker to its CPU", worker=index, cpu=cpu, error=str(exc))


def _fork(index: int, run_worker: Worker, cpu: int | None) -> int:
    """A worker process running `run_worker(index)` on `cpu` (None: wherever the kernel
    runs it); it never returns into the caller."""
    # A stop signal reaching the child before it has reset the supervisor's handlers (they
    # came with the fork) would run them in the child and be lost: the worker would then
    # serve on, deaf to that stop. Blocked across the fork, it waits until SIG_DFL is in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        return pid
    code = 1
    try:
        for signum in _STOP_SIGNALS:  # until the worker installs its own: a stop kills it
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        _pin(index, cpu)
        code = run_worker(index)
    except BaseException:
        log.exception("worker failed", worker=index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not back into the supervisor's stack (its finally blocks)


class _Child:
    """A forked worker and, once it ended, its exit code (as subprocess reports one)."""

    def __init__(self, pid: int, on_end: Callable[[int], None] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.on_end = on_end

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 1 << 8  # exit code 1
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self.on_end is not None:
                    self.on_end(self.pid)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self) -> None:
        while self.poll() is None:
            time.sleep(0.05)


def _watch(
    pids: list[int],
    signals: Signals,
    grace_period: float,
    worker_ended: Callable[[int], None] | None = None,
) -> int:
    workers = [_Child(pid, worker_ended) for pid in pids]
    forwarded_stop = forwarded_force = failed = False
    deadline = float("inf")
    while time.monotonic() < deadline:
        signals.wake.wait(POLL_S)
        signals.wake.clear()
        if signals.reload.is_set():
            signals.reload.clear()
            _signal_all(workers, signal.SIGHUP)
        if signals.stop.is_set() and not forwarded_stop:
            forwarded_stop = True
            deadline = time.monotonic() + grace_period + STOP_MARGIN_S
            _signal_all(workers, signal.SIGTERM)
        if signals.force.is_set() and not forwarded_force:
            forwarded_force = True
            _signal_all(workers, signal.SIGTERM)
        ended = [worker for worker in workers if worker.poll() is not None]
        if ended and not forwarded_stop:
            for worker in ended:
                log.error("a worker ended; stopping the others", exit_code=worker.returncode)
            failed = forwarded_stop = True
            deadline = time.monotonic() + grace_period + STOP_MARGIN_S
            _signal_all(workers, signal.SIGTERM)
        if len(ended) == len(workers):
            break
    for worker in workers:
        if worker.poll() is None:  # past the deadline
            log.error("a worker did not stop in time; killing it", pid=worker.pid)
            worker.kill()
            worker.wait()
    # A worker still starting when the stop was forwarded dies of the SIGTERM itself: it had
    # not installed its handlers, so it had not accepted anything either.
    clean = all(worker.returncode in (0, -signal.SIGTERM) for worker in workers)
    return 1 if failed or not clean else 0


def _signal_all(workers: list[_Child], signum: int) -> None:
    for worker in workers:
        worker.send_signal(signum)
