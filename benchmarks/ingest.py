"""C-STORE ingest benchmark: pacsd receiving CT instances from DCMTK's storescu.

What is measured
    For each instance size and each association count K, the generated CT files (Explicit VR
    Little Endian, one series) are split into K equal parts and K storescu processes, one
    association each, send them at once to a server started for that run alone on 127.0.0.1
    (pacsd: empty index and storage; the reference: an empty folder). The wall time runs from
    the start of the first storescu to the exit of the last one (time.perf_counter): server
    start-up and shutdown are outside it, association set-up and release are inside.
    Throughput is instances/s and MB/s, with MB = 10^6 bytes of Part 10 file size sent.

    For pacsd, p50/p95/p99 are taken from the "dimse" log line of each C-STORE (duration_ms):
    the server-side handler time, from the spooled data set to a durable file and index row.
    Receiving the PDUs happens before the handler runs and is not part of it; "handler share"
    relates the handler time to the associations' lifetime to show where the rest goes.

What is checked
    Nothing is asserted about speed. Each run reports the storescu exit codes, the count of
    Success responses, and the instances in the index afterwards (table `instance`) or the
    files the reference wrote; problems are listed under the table and make the exit code 1,
    because the figures of an incomplete ingest are not valid.

The reference (--reference)
    DCMTK's storescp, files only: no index, no checksum, no fsync (pacsd fsyncs each file and
    commits each index row durably), so it bounds from above what a receiver can do here.

All DCMTK processes run with TCP_NODELAY=1 (see benchmarks/dcmtk.py). Run from the
repository root: python -m benchmarks.ingest --help
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks import orthanc
from benchmarks.dcmtk import (
    REFERENCE_AE,
    ClientRun,
    ReferenceServer,
    run_storescu,
    tool_version,
)
from benchmarks.report import RunResult, Workload, pacsd_details, print_report
from tests.datagen import StudyContext, ct_series
from tests.harness import PacsdProcess, base_config

PACSD_AE = "PACSD"
BENCH_SIZE = 512  # 512x512x16 bits: the 0.5 MB CT instance
SMALL_SIZE = 64  # 64x64x16 bits: a few kB
CLIENT_TIMEOUT_S = 600.0
PACSD_STOP_TIMEOUT_S = 60.0
# Given the server's pid, a context entered around the storescu run (tests/perf/memory.py).
Watch = Callable[[int], AbstractContextManager[object]]


@dataclass(frozen=True)
class Options:
    """The command line, validated."""

    count: int
    associations: tuple[int, ...]
    sizes: tuple[int, ...]
    reference: bool
    orthanc: bool
    database_url: str | None
    keep: bool
    work: Path | None
    timeout: float
    dcmtk: Path

    @property
    def storescu(self) -> Path:
        """DCMTK's storescu."""
        return self.dcmtk / "storescu"

    @property
    def storescp(self) -> Path:
        """DCMTK's storescp."""
        return self.dcmtk / "storescp"


def association_counts(value: str) -> tuple[int, ...]:
    """Parse "1,4" into (1, 4)."""
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("association counts are integers >= 1")
    return counts


def postgresql_url(value: str) -> str:
    """Only PostgreSQL through psycopg: the default run already covers SQLite."""
    if not value.startswith("postgresql+psycopg://"):
        raise argparse.ArgumentTypeError("expected postgresql+psycopg://USER@HOST:PORT/DB")
    return value


def argument_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest",
        description="Measure C-STORE ingest of pacsd with DCMTK's storescu.",
        epilog="Exit code 1 when an instance was not stored: the figures are then not valid.",
    )
    add = parser.add_argument
    add("--count", type=int, default=500, help="CT instances per run (500)")
    add(
        "--associations",
        type=association_counts,
        default=(1, 4),
        metavar="K[,K...]",
        help="concurrent associations, one storescu each (1,4)",
    )
    add("--small", action="store_true", help="also run with 64x64 CT instances (a few kB)")
    add("--reference", action="store_true", help="also run DCMTK storescp as the reference")
    add(
        "--orthanc",
        action="store_true",
        help="also run Orthanc (Debian package, installed when missing) as a reference",
    )
    add(
        "--database-url",
        type=postgresql_url,
        default=None,
        metavar="URL",
        help="postgresql+psycopg URL: index on that server, in a new database per pacsd run "
        "(dropped afterwards WITH (FORCE)); default: a new SQLite file per run",
    )
    add("--keep", action="store_true", help="keep the work folder and every run's folder")
    add(
        "--work",
        type=Path,
        default=None,
        metavar="DIR",
        help="work folder (default: a temporary one, removed unless --keep); generated inputs "
        "are cached there, and only its runs/ folder is removed at the end",
    )
    add("--timeout", type=float, default=CLIENT_TIMEOUT_S, help="seconds per storescu run (600)")
    add("--dcmtk", type=Path, default=Path("/usr/bin"), help="DCMTK's tools (/usr/bin)")
    return parser


def parse_args(argv: Sequence[str] | None) -> Options:
    """Parse and validate the command line."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.count < 1 or max(args.associations) > args.count:
        parser.error("--count must be >= 1 and at least the largest association count")
    sizes = (BENCH_SIZE, SMALL_SIZE) if args.small else (BENCH_SIZE,)
    return Options(
        count=args.count,
        associations=args.associations,
        sizes=sizes,
        reference=args.reference,
        orthanc=args.orthanc,
        database_url=args.database_url,
        keep=args.keep,
        work=args.work,
        timeout=args.timeout,
        dcmtk=args.dcmtk,
    )


def progress(message: str) -> None:
    """Progress goes to stderr; the figures go to stdout."""
    print(f"[ingest] {message}", file=sys.stderr, flush=True)


def psycopg_conninfo(database_url: str) -> str:
    """The libpq URL of a SQLAlchemy postgresql+psycopg URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def database_description(database_url: str | None) -> str:
    """The index backend and its version."""
    if database_url is None:
        return f"sqlite {sqlite3.sqlite_version} (a new file per pacsd run)"
    with psycopg.connect(psycopg_conninfo(database_url)) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    where = make_url(database_url).render_as_string(hide_password=True)
    version = row[0] if row else "?"
    return f"postgresql {version} at {where} (a new database per pacsd run)"


def print_environment(options: Options) -> None:
    """What the figures depend on: machine, versions, database, workload."""
    packages = ("pacsd", "pynetdicom", "pydicom", "SQLAlchemy")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    lines = [
        ("cpus", f"{os.cpu_count()} ({platform.machine()}, {platform.platform()})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("packages", versions),
        ("storescu", f"{tool_version(options.storescu)} ({options.storescu})"),
    ]
    if options.reference:
        lines.append(("storescp", f"{tool_version(options.storescp)} ({options.storescp})"))
    if options.orthanc:
        lines.append(("orthanc", f"{orthanc.version(orthanc.ORTHANC)} (SQLite index)"))
    lines.append(("database", database_description(options.database_url)))
    sizes = ", ".join(f"{size}x{size}x16" for size in options.sizes)
    associations = ",".join(map(str, options.associations))
    workload = f"{options.count} CT instances ({sizes}), Explicit VR Little Endian, one series"
    lines.append(("workload", f"{workload}; associations {associations}"))
    print("pacsd ingest benchmark")
    for label, value in lines:
        print(f"  {label:<9} {value}")
    print(flush=True)


@contextmanager
def work_folder(work: Path | None, keep: bool, name: str = "ingest") -> Iterator[Path]:
    """The work folder: a temporary one is removed unless `keep`; in a given one (--work) only
    the run folders are removed, so that generated inputs are reused by the next invocation."""
    folder = work or Path(tempfile.mkdtemp(prefix=f"pacsd-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if keep:
            print(f"[{name}] kept {folder}", file=sys.stderr, flush=True)
        elif work is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            shutil.rmtree(folder / "runs", ignore_errors=True)


def prepare_inputs(work: Path, count: int, size: int) -> Workload:
    """`count` CT files of `size` x `size` pixels, generated once per (count, size)."""
    folder = work / "inputs" / f"ct{size}-{count}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        progress(f"generating {count} CT instances of {size}x{size} in {folder}")
        for _ in ct_series(folder, count, size, StudyContext()):
            pass
        marker.write_text("complete\n", encoding="utf-8")
    files = tuple(sorted(folder.glob("ct*.dcm")))
    return Workload(size, files, sum(path.stat().st_size for path in files))


def split(files: Sequence[Path], parts: int) -> list[Sequence[Path]]:
    """`files` in `parts` contiguous parts of equal size (within one file)."""
    total = len(files)
    return [files[index * total // parts : (index + 1) * total // parts] for index in range(parts)]


@contextmanager
def index_database(database_url: str | None, run_dir: Path) -> Iterator[str]:
    """The URL of an empty index for one pacsd run: a new SQLite file, or a new PostgreSQL
    database created on the --database-url server and dropped WITH (FORCE) afterwards."""
    if database_url is None:
        yield f"sqlite:///{run_dir / 'index.sqlite'}"
        return
    admin = psycopg_conninfo(database_url)
    name = f"pacsd_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(drop)


def count_instances(database_url: str) -> int:
    """Rows in the index's `instance` table."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM instance")).scalar_one())
    finally:
        engine.dispose()


def stop_pacsd(server: PacsdProcess) -> int | None:
    """SIGTERM pacsd (by its pid) and wait; None when it had to be killed or never started."""
    if server.process is None:
        return None
    try:
        return server.stop(PACSD_STOP_TIMEOUT_S)
    except Exception as exc:  # stop() kills the process before re-raising a timeout
        progress(f"pacsd did not stop cleanly: {exc!r}")
        server.kill()
        return None


def watching(watch: Watch | None, pid: int) -> AbstractContextManager[object]:
    """`watch` applied to the server's `pid`, or nothing."""
    return nullcontext() if watch is None else watch(pid)


def send(
    options: Options,
    workload: Workload,
    associations: int,
    run_dir: Path,
    target: tuple[str, int, int],
    watch: Watch | None,
) -> ClientRun:
    """The workload from `associations` storescu processes to `target` (AE title, port, the
    server's pid for `watch`)."""
    called, port, pid = target
    parts = split(workload.files, associations)
    with watching(watch, pid):
        return run_storescu(options.storescu, called, port, parts, run_dir, options.timeout)


def bench_pacsd(
    options: Options,
    workload: Workload,
    associations: int,
    run_dir: Path,
    watch: Watch | None = None,
) -> RunResult:
    """One pacsd run on an empty index and storage."""
    with index_database(options.database_url, run_dir) as database_url:
        config = base_config(run_dir, database_url=database_url)
        server = PacsdProcess.from_config(run_dir, config)
        try:
            server.start()
            assert server.process is not None
            target = (PACSD_AE, server.port, server.process.pid)
            client = send(options, workload, associations, run_dir, target, watch)
        finally:
            exit_code = stop_pacsd(server)
            (run_dir / "pacsd.log").write_text(server.output() + "\n", encoding="utf-8")
        stored = count_instances(database_url)
    result = RunResult("pacsd", workload, associations, client, stored)
    return pacsd_details(result, server, exit_code)


def bench_reference(
    options: Options,
    workload: Workload,
    associations: int,
    run_dir: Path,
    watch: Watch | None = None,
) -> RunResult:
    """One storescp run into an empty folder."""
    received = run_dir / "received"
    received.mkdir()
    server = ReferenceServer.start(options.storescp, received, run_dir / "storescp.log")
    try:
        target = (REFERENCE_AE, server.port, server.process.pid)
        client = send(options, workload, associations, run_dir, target, watch)
    finally:
        exit_code = server.stop()
    stored = sum(1 for path in received.iterdir() if path.is_file())
    result = RunResult("storescp", workload, associations, client, stored)
    if exit_code not in (0, -15):
        result.problems.append(f"storescp exit code {exit_code}")
    return result


def bench_orthanc(
    options: Options,
    workload: Workload,
    associations: int,
    run_dir: Path,
    watch: Watch | None = None,
) -> RunResult:
    """One Orthanc run with an empty archive (its default SQLite index)."""
    server = orthanc.OrthancServer.start(
        orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log"
    )
    try:
        target = (orthanc.ORTHANC_AE, server.port, server.process.pid)
        client = send(options, workload, associations, run_dir, target, watch)
        stored = server.count_instances()
    finally:
        exit_code = server.stop()
    result = RunResult("orthanc", workload, associations, client, stored)
    if exit_code not in (0, -15):
        result.problems.append(f"Orthanc exit code {exit_code}")
    return result


BENCHES = {"pacsd": bench_pacsd, "storescp": bench_reference, "orthanc": bench_orthanc}


def run_one(
    options: Options, server: str, workload: Workload, associations: int, work: Path
) -> RunResult:
    """One server, one workload, K associations, in a fresh run folder."""
    run_dir = work / "runs" / f"{server}-{workload.size}-k{associations}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    progress(f"{server}: {len(workload.files)} x {workload.size_label}, K={associations}")
    bench = BENCHES[server]
    result = bench(options, workload, associations, run_dir)
    progress(f"  {result.client.seconds:.2f} s, {result.stored} stored, {run_dir}")
    if not options.keep and not result.problems:  # a failed run's logs stay until the end
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def run_all(options: Options, work: Path) -> list[RunResult]:
    """Every (size, K) with pacsd, and with the reference right after when asked."""
    results: list[RunResult] = []
    for size in options.sizes:
        workload = prepare_inputs(work, options.count, size)
        for associations in options.associations:
            results.append(run_one(options, "pacsd", workload, associations, work))
            if options.reference:
                results.append(run_one(options, "storescp", workload, associations, work))
            if options.orthanc:
                results.append(run_one(options, "orthanc", workload, associations, work))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every instance was stored, 1 otherwise."""
    options = parse_args(argv)
    if options.orthanc:
        orthanc.ensure_installed()
    print_environment(options)
    with work_folder(options.work, options.keep) as work:
        results = run_all(options, work)
    print_report(results)
    return 1 if any(result.problems for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
