"""Start, stop and restart: signals, drains, leftovers, schema checks, bind address."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, text

from pacsd.index.schema import HEAD_REVISION
from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess, base_config, echo, pacsd_command
from tests.inspect_archive import assert_index_matches_files, dataset_bytes, work_files
from tests.scu import associate, chunked_send, file_context

ServerFactory = Callable[..., PacsdProcess]
WAIT_S = 60.0


class SendingClient(threading.Thread):
    """Sends files over one association in the background, recording each status."""

    def __init__(self, server: PacsdProcess, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.server, self.paths = server, paths
        self.statuses: list[int | None] = []
        self.progress = threading.Semaphore(0)

    def run(self) -> None:
        contexts = [file_context(self.paths[0])]
        # A short DIMSE timeout: after an A-ABORT, pynetdicom's SCU still waits that long for
        # the response to the C-STORE in flight.
        server = self.server
        with chunked_send(), associate(server.host, server.port, contexts, timeout=5) as assoc:
            for path in self.paths:
                if not assoc.is_established:
                    break
                response = assoc.send_c_store(path)
                self.statuses.append(int(response.Status) if "Status" in response else None)
                self.progress.release()

    def wait_for_successes(self, count: int) -> None:
        """Block until `count` stores were answered."""
        for _ in range(count):
            assert self.progress.acquire(timeout=WAIT_S), "client made no progress"

    def succeeded(self) -> list[Path]:
        """The files whose C-STORE was answered with success."""
        return [p for p, s in zip(self.paths, self.statuses, strict=False) if s == 0x0000]


def small_ct_files(folder: Path, count: int) -> list[Path]:
    """`count` small CT files of one series."""
    return list(datagen.ct_series(folder, count, size=32))


def assert_stored_exactly(server: PacsdProcess, database_url: str, paths: list[Path]) -> None:
    """Every acknowledged file is stored byte-identical; index and files agree; no .part."""
    storage = server.storage_root
    rows = assert_index_matches_files(database_url, storage)
    by_uid = {row["sop_instance_uid"]: row for row in rows}
    for path in paths:
        row = by_uid[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        assert dataset_bytes(storage / str(row["file_path"])) == dataset_bytes(path)
    assert [p for p in work_files(storage) if p.suffix == ".part"] == []


def test_sigterm_drains_a_running_transfer(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """SIGTERM: no new associations, the running one completes, exit 0, everything stored."""
    server = pacsd_server(database_url)
    paths = small_ct_files(tmp_path / "in", 60)
    client = SendingClient(server, paths)
    client.start()
    client.wait_for_successes(5)
    server.send_signal(signal.SIGTERM)
    client.join(WAIT_S)
    assert server.wait(WAIT_S) == 0
    assert client.statuses == [0x0000] * len(paths)
    assert not echo(server.host, server.port), "the listener is closed"
    assert_stored_exactly(server, database_url, paths)
    assert not server.events("aborted associations still running after the grace period")


def test_sigterm_aborts_after_the_grace_period_and_loses_nothing(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """After the grace period the transfer is aborted; every acknowledged instance is whole."""
    server = pacsd_server(database_url, daemon={"shutdown_grace_period": 0.5})
    paths = small_ct_files(tmp_path / "in", 400)
    client = SendingClient(server, paths)
    client.start()
    client.wait_for_successes(20)
    server.send_signal(signal.SIGTERM)
    assert server.wait(WAIT_S) == 0
    client.join(WAIT_S)
    acknowledged = client.succeeded()
    assert 20 <= len(acknowledged) < len(paths), "the association was cut short"
    assert server.events("aborted associations still running after the grace period")
    assert_stored_exactly(server, database_url, acknowledged)

    restarted = PacsdProcess(config_path=server.config_path).start()
    try:
        assert echo(restarted.host, restarted.port)
        assert work_files(server.storage_root) == []
    finally:
        assert restarted.stop() == 0
    assert_stored_exactly(restarted, database_url, acknowledged)


def test_second_signal_stops_without_waiting(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """A second SIGTERM skips the 30 s grace period; the idle association is aborted."""
    server = pacsd_server(database_url, daemon={"shutdown_grace_period": 30})
    contexts = [(VERIFICATION, "1.2.840.10008.1.2")]
    with associate(server.host, server.port, contexts) as assoc:
        server.send_signal(signal.SIGTERM)
        _wait_for_event(server, "stopping: no new associations, draining")
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(WAIT_S) == 0
        assert time.monotonic() - started < 10
        _wait_until(lambda: not assoc.is_established)
        assert assoc.is_aborted


def test_sigusr1_prints_every_threads_stack_and_the_server_serves_on(
    pacsd_server: ServerFactory, database_url: str
) -> None:
    """SIGUSR1: a stack dump to stderr (what to attach to a report of a hang), nothing else."""
    server = pacsd_server(database_url)
    contexts = [(VERIFICATION, "1.2.840.10008.1.2")]
    with associate(server.host, server.port, contexts) as assoc:
        # faulthandler shows at most 100 frames per thread, the newest first: caught deep in a
        # call, the event loop's stack loses its oldest frames, _serve_associations among them.
        # A dump comes whole or not at all, so a second one settles it.
        for _attempt in range(3):
            before = _thread_headers(server)  # counted first: the dump may be read at once
            server.send_signal(signal.SIGUSR1)
            _wait_until(partial(_more_thread_headers, server, before))
            time.sleep(0.2)  # the rest of this dump's lines
            if any("_serve_associations" in line for line in server.raw_lines):
                break
        assert assoc.send_c_echo().Status == 0x0000
    assert echo(server.host, server.port)
    dump = [line for line in server.raw_lines if line.startswith(("Thread 0x", "Current thread"))]
    assert len(dump) >= 2  # the main thread (the engine's event loop), the commitment worker
    assert any("_serve_associations" in line for line in server.raw_lines)  # the event loop
    assert server.stop() == 0


SYS_TGKILL = {"x86_64": 234, "aarch64": 131}  # linux/unistd.h: a signal to one thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_received_by_another_thread_than_the_main_one_is_acted_on(
    pacsd_server: ServerFactory, database_url: str, signum: int
) -> None:
    """The kernel may hand a process's signal to any thread; pacsd must still act on it."""
    number = SYS_TGKILL.get(platform.machine())
    if number is None:
        pytest.skip(f"tgkill's system call number unknown on {platform.machine()}")
    server = pacsd_server(database_url)
    assert server.process is not None
    pid = server.process.pid
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    assert others, "pacsd runs threads besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(number, pid, others[0], int(signum)) == 0, ctypes.get_errno()
    if signum == signal.SIGHUP:
        _wait_for_event(server, "SIGHUP: reloading the configuration")
        assert echo(server.host, server.port)
        assert server.stop(WAIT_S) == 0
    else:
        assert server.wait(WAIT_S) == 0


def _wait_for_event(server: PacsdProcess, event: str) -> None:
    _wait_until(lambda: bool(server.events(event)))


def _thread_headers(server: PacsdProcess) -> int:
    """How many thread stacks the server's dumps showed so far (a header line each)."""
    return sum(line.startswith(("Thread 0x", "Current thread")) for line in server.raw_lines)


def _more_thread_headers(server: PacsdProcess, before: int) -> bool:
    return _thread_headers(server) > before


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_listener_binds_only_the_configured_address(pacsd_server: ServerFactory) -> None:
    """Bound to 127.0.0.1, pacsd is not reachable on another loopback address (127.0.0.2)."""
    server = pacsd_server()
    assert echo("127.0.0.1", server.port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", server.port), 2).close()


def test_listener_serves_ipv6_loopback(pacsd_server: ServerFactory) -> None:
    """host: ::1 listens on IPv6 loopback."""
    if not socket.has_ipv6 or not _ipv6_loopback_available():
        pytest.skip("no IPv6 loopback on this machine")
    server = pacsd_server(network={"host": "::1"})
    assert server.host == "::1"
    assert echo("::1", server.port)


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_serve_refuses_an_out_of_date_schema(database_url: str, tmp_path: Path) -> None:
    """A database behind the migrations stops start-up (exit 1) until `pacsd db upgrade`."""
    server = PacsdProcess.from_config(tmp_path, base_config(tmp_path, database_url))
    upgraded = pacsd_command("db", "upgrade", "--config", str(server.config_path))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {HEAD_REVISION}" in upgraded.stdout
    engine = create_engine(database_url)
    with engine.begin() as connection:  # as if the tables came from an older pacsd
        connection.execute(text("DELETE FROM alembic_version"))
    engine.dispose()

    refused = pacsd_command("serve", "--config", str(server.config_path))
    assert refused.returncode == 1
    assert "run `pacsd db upgrade`" in refused.stderr
