"""Several worker processes on one DICOM port (`network.workers` > 1), under one supervisor.

One Python process runs its DICOM work under one GIL, so it uses one core however many
associations it serves. With `network.workers: N`, `pacsd serve` becomes a supervisor that
prepares the archive once (schema, leftovers of an interrupted run), then starts N
`pacsd serve` worker processes. Each binds the same address with SO_REUSEPORT and the kernel
spreads new connections over them. The index keeps them consistent: PostgreSQL as usual;
SQLite in WAL mode, where each worker's index writer takes the database's write lock in turn
(busy timeout), so every commit stays atomic and durable.

What stays with worker 0: the status interface (it shows worker 0's associations) and the
Storage Commitment worker, which reads pending requests from the database and so reports on
those received by any worker (on a new association when the request came to another one).
Association limits (`network.max_associations`, a policy's `max_associations`) hold per worker.

The supervisor forwards SIGTERM/SIGINT (graceful, then forced) and SIGHUP (reload) to the
workers. When a worker ends on its own, the supervisor stops the others and exits 1, so that
systemd or Docker restarts the whole service rather than running with fewer workers unseen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pacsd.logs import get_logger
from pacsd.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings
from pacsd.signals import Signals

WORKER_ENV = "PACSD_WORKER_INDEX"  # set in a worker's environment: its index, from 0
PORT_ENV = f"{ENV_PREFIX}NETWORK{ENV_NESTED_DELIMITER}PORT"
TLS_PORT_ENV = f"{ENV_PREFIX}NETWORK{ENV_NESTED_DELIMITER}TLS{ENV_NESTED_DELIMITER}PORT"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.2
STOP_MARGIN_S = 15.0  # beyond the workers' own grace period, before they are killed

log = get_logger("pacsd.workers")


def worker_index() -> int | None:
    """This process's index as a worker, or None when it is not a worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None else None


def stop_with_supervisor() -> None:
    """In a worker: have the kernel send SIGTERM when the supervisor dies (even by SIGKILL),
    so that no worker is left holding the port without it (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot follow the supervisor's death", errno=ctypes.get_errno())
    if os.getppid() == 1:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """The port the workers share; for port 0, an ephemeral one held (bound, not listening)
    with SO_REUSEPORT until the workers stop, so that nobody else takes it meanwhile."""
    if port != 0:
        yield port
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))
        yield int(holder.getsockname()[1])


def supervise(settings: Settings, config_source: Path | None, signals: Signals) -> int:
    """Run `settings.network.workers` workers until a signal stops them; the exit code."""
    network = settings.network
    with ExitStack() as held:
        ports: dict[str, str] = {}
        if network.listen_plain:
            ports[PORT_ENV] = str(held.enter_context(reserved_port(network.host, network.port)))
        if network.tls.enabled:  # the TLS listener's port is shared the same way
            tls_port = held.enter_context(reserved_port(network.host, network.tls.port))
            ports[TLS_PORT_ENV] = str(tls_port)
        workers = [_spawn(index, ports, config_source) for index in range(network.workers)]
        log.info(
            "workers started",
            workers=len(workers),
            host=network.host,
            port=int(ports[PORT_ENV]) if PORT_ENV in ports else None,
            tls_port=int(ports[TLS_PORT_ENV]) if TLS_PORT_ENV in ports else None,
        )
        code = _watch(workers, signals, settings.daemon.shutdown_grace_period)
    log.info("workers stopped", exit_code=code)
    return code


def _spawn(
    index: int, ports: dict[str, str], config_source: Path | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pacsd", "serve"]
    if config_source is not None:
        command += ["--config", str(config_source)]
    environment = {**os.environ, WORKER_ENV: str(index), **ports}
    return subprocess.Popen(command, env=environment)  # stdout/stderr: the supervisor's


def _watch(workers: list[subprocess.Popen[bytes]], signals: Signals, grace_period: float) -> int:
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
    # not installed its handlers, so it had not listened or accepted anything either.
    clean = all(worker.returncode in (0, -signal.SIGTERM) for worker in workers)
    return 1 if failed or not clean else 0


def _signal_all(workers: list[subprocess.Popen[bytes]], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signum)
