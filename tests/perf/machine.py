"""The machine's own limits, printed under the table: what no DICOM server here can exceed.

Loopback TCP throughput (one Python socket pair on 127.0.0.1, 1 MiB sends), sequential write
with one fsync at the end, and the latency of a 4 kB write + fsync, all in the run's work
folder; then the versions the figures depend on. These are not goals: they say whether a
figure is near what the machine allows (e.g. an fsync per instance bounds one association's
instances/s by 1 / fsync latency).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import orthanc
from benchmarks.dcmtk import HOST, tool_version

CHUNK = 1 << 20  # 1 MiB
FSYNC_BLOCK = 4096
SOCKET_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LimitSizes:
    """How much each measurement moves: the full run's sizes, or --smoke's."""

    loopback_bytes: int
    disk_bytes: int
    fsync_samples: int
    time_limit_s: float

    @classmethod
    def for_run(cls, smoke: bool) -> LimitSizes:
        """1 GiB over loopback and 512 MiB to disk by hand; a tenth or less in --smoke."""
        if smoke:
            return cls(256 * CHUNK, 64 * CHUNK, 50, 5.0)
        return cls(1024 * CHUNK, 512 * CHUNK, 200, 20.0)


@dataclass(frozen=True)
class MachineLimits:
    """Loopback and disk figures of this run."""

    loopback_mb_s: float
    loopback_bytes: int
    disk_write_mb_s: float
    disk_bytes: int
    fsync_ms: list[float]

    def lines(self) -> list[str]:
        """One line per figure (MB = 10^6 bytes)."""
        fsync = sorted(self.fsync_ms)
        p95 = fsync[max(0, round(0.95 * len(fsync)) - 1)]
        return [
            f"loopback TCP: {self.loopback_mb_s:,.0f} MB/s "
            f"({self.loopback_bytes / 1e6:,.0f} MB in 1 MiB sends, one connection)",
            f"disk sequential write + fsync: {self.disk_write_mb_s:,.0f} MB/s "
            f"({self.disk_bytes / 1e6:,.0f} MB in 1 MiB writes, one fsync at the end)",
            f"disk 4 kB write + fsync: median {statistics.median(fsync):.2f} ms, "
            f"p95 {p95:.2f} ms ({len(fsync)} samples)",
        ]


def loopback_throughput(total_bytes: int, time_limit: float) -> tuple[int, float]:
    """Bytes received over one 127.0.0.1 TCP connection and the seconds it took."""
    received = [0]
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(SOCKET_TIMEOUT_S)
        port = listener.getsockname()[1]
        receiver = threading.Thread(target=_receive_all, args=(listener, received), daemon=True)
        receiver.start()
        payload = os.urandom(CHUNK)
        with socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_S) as sender:
            started = time.perf_counter()
            deadline = started + time_limit
            sent = 0
            while sent < total_bytes and time.perf_counter() < deadline:
                sender.sendall(payload)
                sent += len(payload)
            sender.shutdown(socket.SHUT_WR)
            receiver.join(SOCKET_TIMEOUT_S)
            seconds = time.perf_counter() - started
    return received[0], seconds


def _receive_all(listener: socket.socket, received: list[int]) -> None:
    connection, _ = listener.accept()
    buffer = bytearray(CHUNK)
    with connection:
        connection.settimeout(SOCKET_TIMEOUT_S)
        while count := connection.recv_into(buffer):
            received[0] += count


def sequential_write(folder: Path, total_bytes: int, time_limit: float) -> tuple[int, float]:
    """Bytes written in 1 MiB writes then fsynced once, and the seconds it took."""
    path = folder / "sequential.bin"
    payload = os.urandom(CHUNK)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        deadline = started + time_limit
        written = 0
        while written < total_bytes and time.perf_counter() < deadline:
            written += os.write(descriptor, payload)
        os.fsync(descriptor)
        seconds = time.perf_counter() - started
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return written, seconds


def fsync_latencies(folder: Path, samples: int, time_limit: float) -> list[float]:
    """Milliseconds of each (4 kB append + fsync), as a storing server does per instance."""
    path = folder / "fsync.bin"
    block = os.urandom(FSYNC_BLOCK)
    latencies: list[float] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        deadline = time.perf_counter() + time_limit
        while len(latencies) < samples and time.perf_counter() < deadline:
            started = time.perf_counter()
            os.write(descriptor, block)
            os.fsync(descriptor)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    return latencies


def measure(work: Path, smoke: bool) -> MachineLimits:
    """Loopback and disk limits, measured in `work` (the benchmark's work folder)."""
    sizes = LimitSizes.for_run(smoke)
    folder = work / "machine"
    folder.mkdir(parents=True, exist_ok=True)
    loopback_bytes, loopback_s = loopback_throughput(sizes.loopback_bytes, sizes.time_limit_s)
    disk_bytes, disk_s = sequential_write(folder, sizes.disk_bytes, sizes.time_limit_s)
    fsync_ms = fsync_latencies(folder, sizes.fsync_samples, sizes.time_limit_s)
    return MachineLimits(
        loopback_mb_s=loopback_bytes / 1e6 / loopback_s,
        loopback_bytes=loopback_bytes,
        disk_write_mb_s=disk_bytes / 1e6 / disk_s,
        disk_bytes=disk_bytes,
        fsync_ms=fsync_ms,
    )


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(storescu: Path, orthanc_binary: Path | None) -> list[str]:
    """CPUs, OS, Python, the Python packages, DCMTK and Orthanc."""
    packages = ("pacsd", "pynetdicom", "pydicom", "SQLAlchemy")
    package_versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    lines = [
        f"cpus: {os.cpu_count()} x {cpu_model()}",
        f"os: {platform.platform()}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"packages: {package_versions}, sqlite {sqlite3.sqlite_version}",
        f"dcmtk: {tool_version(storescu)} ({storescu})",
    ]
    if orthanc_binary is not None:
        lines.append(f"orthanc: {orthanc.version(orthanc_binary)}")
    return lines
