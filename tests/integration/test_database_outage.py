"""Database unavailable: PostgreSQL stopped mid-run. C-STORE answers 0xA700 at once and keeps
no file, C-ECHO still works, and once PostgreSQL is back pacsd stores again without a restart;
nothing acknowledged before the outage is lost.

The test runs its own PostgreSQL cluster (initdb into a temporary folder, a free loopback port,
its socket in that folder), never the machine's shared server. It skips when the PostgreSQL
server binaries are not installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import datagen
from tests.harness import PacsdProcess, echo
from tests.inspect_archive import assert_index_matches_files, stored_files, work_files
from tests.scu import associate, chunked_send, file_context, status_of, store_files

PG_TIMEOUT_S = 60
REFUSAL_BOUND_S = 10.0  # a C-STORE during the outage is answered within this


def _pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: Debian's versioned folders, else the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:`port`, run as the `postgres` user when
    the test runs as root (PostgreSQL refuses to run as root)."""

    bin_dir: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.folder / "data"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=PG_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb with trust authentication (loopback only, throw-away)."""
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """pg_ctl start, waiting (bounded) until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data), "-w",
            "-t", str(PG_TIMEOUT_S), "-l", str(self.folder / "postgres.log"), "-o", options,
        )  # fmt: skip

    def stop_immediately(self) -> None:
        """pg_ctl stop -m immediate: the server goes away as in a crash."""
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate")

    def url(self, database: str) -> str:
        """A pacsd database URL for `database` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name`."""
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster, stopped and removed at the end."""
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    folder = Path(tempfile.mkdtemp(prefix="pacsd-pg-"))  # not under pytest's root-only tmp
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = PrivatePostgres(bin_dir, folder, _free_loopback_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped
            cluster.stop_immediately()
        shutil.rmtree(folder, ignore_errors=True)


def _timed_store(server: PacsdProcess, source: Path) -> tuple[int | None, str, float]:
    started = time.monotonic()
    [(status, comment)] = store_files(server.host, server.port, [source])
    return status, comment, time.monotonic() - started


@pytest.mark.timeout(240)
def test_postgresql_outage_refuses_with_a700_then_pacsd_reconnects(
    private_postgres: PrivatePostgres,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """Stores before the outage stay; during it C-STORE answers 0xA700 within a bound, keeps
    no file and C-ECHO works; after PostgreSQL restarts the next C-STORE succeeds."""
    private_postgres.create_database("pacsd")
    url = private_postgres.url("pacsd")
    server = pacsd_server(url)
    sources = list(datagen.ct_series(tmp_path / "sources", 6, size=16))
    before, during, after = sources[:3], sources[3:5], sources[5:]
    assert store_files(server.host, server.port, before) == [(0x0000, "")] * 3

    private_postgres.stop_immediately()
    for source in during:
        status, comment, seconds = _timed_store(server, source)
        assert status == 0xA700, comment
        assert seconds < REFUSAL_BOUND_S
        assert "database" in comment
    assert echo(server.host, server.port)
    assert len(stored_files(server.storage_root)) == 3, "a refused instance left its file"
    assert work_files(server.storage_root) == []

    private_postgres.start()
    status, comment, _ = _timed_store(server, after[0])
    assert (status, comment) == (0x0000, ""), "pacsd did not reconnect by itself"
    rows = assert_index_matches_files(url, server.storage_root)
    stored_uids = {row["sop_instance_uid"] for row in rows}
    sent_uids = {path_uid(source) for source in before + after}
    assert stored_uids == sent_uids
    assert server.process is not None
    assert server.process.poll() is None, "pacsd kept running"


def test_postgresql_restarted_between_stores_costs_no_store(
    private_postgres: PrivatePostgres,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """The index writer keeps its connection between C-STOREs; PostgreSQL restarting while
    it is idle kills that connection, and the next C-STORE still succeeds at once (the
    writer reconnects before COMMIT, so nothing is in doubt)."""
    private_postgres.create_database("pacsd")
    url = private_postgres.url("pacsd")
    server = pacsd_server(url)
    sources = list(datagen.ct_series(tmp_path / "sources", 3, size=16))
    assert store_files(server.host, server.port, sources[:1]) == [(0x0000, "")]
    for source in sources[1:]:
        private_postgres.stop_immediately()
        private_postgres.start()
        status, comment, _ = _timed_store(server, source)
        assert (status, comment) == (0x0000, ""), "a store failed after a restart"
    rows = assert_index_matches_files(url, server.storage_root)
    assert {row["sop_instance_uid"] for row in rows} == {path_uid(path) for path in sources}


def path_uid(source: Path) -> str:
    """The SOP Instance UID of a generated file."""
    from pydicom import dcmread

    return str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.timeout(240)
def test_postgresql_stopped_during_parallel_stores_loses_nothing_acknowledged(
    private_postgres: PrivatePostgres,
    pacsd_server: Callable[..., PacsdProcess],
    tmp_path: Path,
) -> None:
    """PostgreSQL dies while two associations store: each answer is 0x0000 or 0xA700, and
    once it is back every acknowledged instance is indexed with its file, no file is extra."""
    private_postgres.create_database("pacsd")
    url = private_postgres.url("pacsd")
    server = pacsd_server(url)
    batches = [list(datagen.ct_series(tmp_path / f"sender{n}", 30, size=16)) for n in range(2)]
    answers: dict[Path, int | None] = {}

    def send(batch: list[Path]) -> None:
        with associate(server.host, server.port, [file_context(batch[0])]) as assoc:
            for source in batch:
                answers[source] = status_of(assoc.send_c_store(source))

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    with chunked_send():
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answers) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the first answers, so that the outage hits mid-run
        private_postgres.stop_immediately()
        for thread in threads:
            thread.join(120)
    private_postgres.start()
    assert set(answers.values()) <= {0x0000, 0xA700}, answers
    acknowledged = {path_uid(source) for source, status in answers.items() if status == 0}
    assert 0xA700 in answers.values(), "the outage refused nothing: it came too late"
    wait_until_stored(server, tmp_path)
    rows = assert_index_matches_files(url, server.storage_root)
    assert acknowledged <= {row["sop_instance_uid"] for row in rows}


def wait_until_stored(server: PacsdProcess, tmp_path: Path) -> None:
    """One more C-STORE after the restart succeeds (pacsd reconnected)."""
    [source] = datagen.ct_series(tmp_path / "after", 1, size=16)
    assert store_files(server.host, server.port, [source]) == [(0x0000, "")]
