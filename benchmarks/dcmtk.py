"""DCMTK processes for the benchmarks: storescu clients and a storescp reference server.

Every process is started with TCP_NODELAY=1: DCMTK 3.6.7 leaves Nagle's algorithm on otherwise,
and a DIMSE request/response exchange can then wait ~40 ms for a delayed ACK while pacsd sets
TCP_NODELAY on its own sockets (PYNETDICOM_NOTES.md, "Sockets and measurement"). Processes are
only ever ended by their own pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import echo, free_loopback_host

HOST = free_loopback_host()
CALLING_AE_PREFIX = "BENCHSCU"
REFERENCE_AE = "STORESCP"
# storescu never sends PDVs larger than 128 KiB whatever the acceptor offers (pacsd offers 256
# KiB and storescu reports "Max Send PDV: 131060"); storescp's default receive limit is 16 KiB.
# At its maximum the reference receives the same PDV size as pacsd.
REFERENCE_MAX_PDU = 131072
STORE_SUCCESS = "Received Store Response (Success)"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def dcmtk_environment() -> dict[str, str]:
    """The environment of every DCMTK process: ours with Nagle's algorithm off."""
    return {**os.environ, "TCP_NODELAY": "1"}


def tool_version(tool: Path) -> str:
    """The first line of `tool --version`; refuses anything that is not DCMTK's tool.

    pynetdicom installs Python programs called storescu and storescp in the virtualenv's bin
    folder, which shadow DCMTK's when that folder comes first on PATH.
    """
    completed = subprocess.run(
        [str(tool), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    first_line = (completed.stdout or completed.stderr).strip().splitlines()[:1]
    version = first_line[0] if first_line else ""
    if "dcmtk" not in version.lower():
        raise SystemExit(f"{tool} is not DCMTK's tool (version line: {version!r})")
    return version


@dataclass(frozen=True)
class ClientRun:
    """K storescu processes run at once: their wall time, exit codes and successes."""

    seconds: float
    exit_codes: tuple[int | None, ...]  # None: killed after the timeout
    successes: int
    logs: tuple[Path, ...]

    @property
    def timed_out(self) -> bool:
        """Whether a client had to be killed."""
        return None in self.exit_codes


def storescu_command(
    storescu: Path, called_ae_title: str, port: int, files: Sequence[Path], index: int
) -> list[str]:
    """One storescu association sending `files`; -v logs one line per store response."""
    calling = f"{CALLING_AE_PREFIX}{index}"
    return [str(storescu), "-v", "-aet", calling, "-aec", called_ae_title, HOST, str(port)] + [
        str(path) for path in files
    ]


def run_storescu(
    storescu: Path,
    called_ae_title: str,
    port: int,
    parts: Sequence[Sequence[Path]],
    log_dir: Path,
    timeout: float,
) -> ClientRun:
    """Start one storescu per part at once; time from the first start to the last exit."""
    logs = tuple(log_dir / f"storescu-{index}.log" for index in range(len(parts)))
    environment = dcmtk_environment()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = time.perf_counter()
        for index, (files, log_path) in enumerate(zip(parts, logs, strict=True)):
            command = storescu_command(storescu, called_ae_title, port, files, index)
            with log_path.open("wb") as log:
                processes.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
                )
        exit_codes = wait_all(processes, timeout)
        seconds = time.perf_counter() - started
    finally:
        for process in processes:
            kill(process)
    return ClientRun(seconds, exit_codes, sum(count_successes(path) for path in logs), logs)


def wait_all(
    processes: Sequence[subprocess.Popen[bytes]], timeout: float
) -> tuple[int | None, ...]:
    """Wait for every process within one shared `timeout`; kill (by pid) those still running."""
    deadline = time.monotonic() + timeout
    exit_codes: list[int | None] = []
    for process in processes:
        try:
            exit_codes.append(process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill(process)
            exit_codes.append(None)
    return tuple(exit_codes)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL `process` if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def count_successes(log_path: Path) -> int:
    """Store responses with status Success that storescu logged."""
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return text.count(STORE_SUCCESS)


def free_loopback_port() -> int:
    """A TCP port free on loopback right now (storescp cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class ReferenceServer:
    """DCMTK's storescp writing received files to a folder: no index, no fsync."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, storescp: Path, output_dir: Path, log_path: Path) -> ReferenceServer:
        """Start storescp on a free port and wait until it answers C-ECHO.

        --fork gives each association its own process, as pacsd serves associations in
        parallel; storescp accepts every storage SOP class in uncompressed transfer syntaxes by
        default. DCMTK 3.6.7's storescp has no bind-address option: it listens on every
        interface, though only 127.0.0.1 is ever connected to.
        """
        port = free_loopback_port()
        command = [str(storescp), "--fork", "-aet", REFERENCE_AE]
        command += ["-pdu", str(REFERENCE_MAX_PDU), "-od", str(output_dir), str(port)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_environment()
            )
        server = cls(process, port)
        try:
            server.wait_until_ready(START_TIMEOUT_S)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_until_ready(self, timeout: float) -> None:
        """Poll C-ECHO until storescp answers; fail early if it exited."""
        wait_for_echo(self.process, self.port, REFERENCE_AE, "storescp", timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a bound; returns the exit code."""
        return terminate(self.process)


def wait_for_echo(
    process: subprocess.Popen[bytes], port: int, ae_title: str, name: str, timeout: float
) -> None:
    """Poll C-ECHO on `port` until the server `process` answers; fail early if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        if echo(HOST, port, called=ae_title):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer from {name} on port {port}")


def terminate(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM `process` (by its pid), then SIGKILL after a bound; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill(process)
    return process.returncode
