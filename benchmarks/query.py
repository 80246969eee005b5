"""Query/Retrieve benchmark: C-FIND latency, C-MOVE and C-GET throughput on an indexed archive.

What is built
    A deterministic archive of --instances small instances (32x32x16 bits, about 3 kB each):
    patients named FAMILY^GIVEN from fixed lists, two studies each (one CT, one MR), one series
    of five instances per study, study dates spread over 2015-2024. UIDs are derived from the
    plan, so the generated files are reused from --work by later runs. DCMTK's storescu sends
    them to a pacsd with an empty SQLite index (or a new PostgreSQL database, --database-url)
    over four associations; the ingest rate is printed as a by-product.

What is measured (time.perf_counter, client side, on 127.0.0.1)
    C-FIND: one pynetdicom association, Study Root, STUDY level, ten return keys (as a viewer's
    study list asks), from sending the request to the final response, --repeat times each for
      - a PatientName wildcard, "ABC*" with the three first letters of a family name, and
      - a StudyDate range of one month, "YYYYMM01-YYYYMM28";
    each query's matches are compared with the set computed from the plan. One unmeasured query
    of each kind warms the server up first.
    C-MOVE: pynetdicom as the requester, DCMTK's storescp (TCP_NODELAY=1, one process per
    association) as the destination: --repeat moves of one study each, then one move of
    --bulk-studies studies (a list of Study Instance UIDs), from request to final response.
    C-GET: DCMTK's getscu (receiving PDUs of up to 128 KiB, as storescp) fetching the same one
    study and the same bulk list, process wall time (so its start-up and association set-up
    count too).
    The final responses' sub-operation counts and the SOP Instance UIDs received are checked.

Nothing is asserted about speed; any wrong count is listed as a problem and makes the exit
code 1, because the figures of a wrong answer are not valid. Run from the repository root:
python -m benchmarks.query --help
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from benchmarks.dcmtk import (
    HOST,
    REFERENCE_AE,
    REFERENCE_MAX_PDU,
    ReferenceServer,
    dcmtk_environment,
    run_storescu,
    tool_version,
)
from benchmarks.ingest import (
    count_instances,
    index_database,
    psycopg_conninfo,
    stop_pacsd,
    work_folder,
)
from benchmarks.report import percentile
from tests.datagen import TEST_UID_ROOT, StudyContext, ct_image, write_part10
from tests.harness import PacsdProcess, base_config

PACSD_AE = "PACSD"
CALLING_AE = "BENCHQR"
PER_SERIES = 5
STUDIES_PER_PATIENT = 2
PIXELS = 32
INGEST_ASSOCIATIONS = 4
DIMSE_TIMEOUT_S = 600.0
CLIENT_TIMEOUT_S = 1800.0
FIRST_DAY = date(2015, 1, 1)
DAYS = 3650
# Family names with distinct first three letters, so "ABC*" selects exactly one family.
FAMILIES = [
    "ADAMS",
    "BAKER",
    "CARTER",
    "DAVIS",
    "EVANS",
    "FISHER",
    "GARCIA",
    "HUGHES",
    "IRWIN",
    "JONES",
    "KELLER",
    "LOPEZ",
    "MILLER",
    "NGUYEN",
    "OWENS",
    "PARKER",
    "QUINN",
    "ROBERTS",
    "SANCHEZ",
    "TURNER",
    "UPTON",
    "VARGAS",
    "WALKER",
    "YOUNG",
    "ZIMMER",
    "ABBOTT",
    "BROWN",
    "CLARK",
    "DIXON",
    "ELLIS",
    "FOSTER",
    "GRANT",
    "HARRIS",
    "INGRAM",
    "JOHNSON",
    "KING",
    "LEWIS",
    "MORGAN",
    "NELSON",
    "OLSEN",
]
GIVEN_NAMES = [
    "ANNA",
    "BEN",
    "CLARA",
    "DAVID",
    "EMMA",
    "FELIX",
    "GRACE",
    "HENRY",
    "IDA",
    "JACK",
    "KATE",
    "LEO",
    "MIA",
    "NOAH",
]
FIND_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]


@dataclass(frozen=True)
class Study:
    """One generated study: its patient, date, modality and instances."""

    index: int
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    study_date: str
    modality: str
    sop_uids: tuple[str, ...]


def plan(instances: int, first: int = 0) -> list[Study]:
    """The archive: ceil(instances / 5) studies, two per patient, all values deterministic.

    Study number `first` comes first: plans with distinct ranges share no UID, and
    plan(n) is the beginning of plan(m) for n < m.
    """
    studies: list[Study] = []
    for index in range(first, first + -(-instances // PER_SERIES)):
        patient = index // STUDIES_PER_PATIENT
        family = FAMILIES[patient % len(FAMILIES)]
        given = GIVEN_NAMES[(patient // len(FAMILIES)) % len(GIVEN_NAMES)]
        day = FIRST_DAY + timedelta(days=(index * 7919) % DAYS)
        root = f"{TEST_UID_ROOT}9.{index + 1}"
        studies.append(
            Study(
                index=index,
                patient_id=f"BQ{patient:06d}",
                patient_name=f"{family}^{given}",
                study_uid=root,
                series_uid=f"{root}.1",
                study_date=day.strftime("%Y%m%d"),
                modality="CT" if index % 2 == 0 else "MR",
                sop_uids=tuple(f"{root}.1.{number}" for number in range(1, PER_SERIES + 1)),
            )
        )
    return studies


def write_archive(folder: Path, studies: Sequence[Study]) -> list[Path]:
    """The Part 10 files of `studies` in `folder`, written once (a marker says complete)."""
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        progress(f"generating {sum(len(s.sop_uids) for s in studies)} instances in {folder}")
        for study in studies:
            context = StudyContext(
                patient_id=study.patient_id,
                patient_name=study.patient_name,
                study_instance_uid=study.study_uid,
                series_instance_uid=study.series_uid,
                accession_number=f"BA{study.index:07d}",
                study_date=study.study_date,
            )
            for number, uid in enumerate(study.sop_uids, start=1):
                ds = ct_image(context, number, PIXELS)
                ds.SOPInstanceUID = uid
                ds.StudyTime = f"{(study.index * 37) % 24:02d}{study.index % 60:02d}00"
                if study.modality == "MR":
                    ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"
                write_part10(ds, folder / f"{uid}.dcm")
        marker.write_text("complete\n", encoding="utf-8")
    return sorted(folder.glob("*.dcm"))


@dataclass(frozen=True)
class Options:
    """The command line, validated."""

    instances: int
    repeat: int
    bulk_studies: int
    database_url: str | None
    work: Path | None
    keep: bool
    dcmtk: Path


def parse_args(argv: Sequence[str] | None) -> Options:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.query",
        description="Measure C-FIND latency and C-MOVE / C-GET throughput of pacsd.",
        epilog="Exit code 1 when an answer was wrong: the figures are then not valid.",
    )
    add = parser.add_argument
    add("--instances", type=int, default=10_000, help="instances in the archive (10000)")
    add("--repeat", type=int, default=50, help="measured repetitions of each query (50)")
    add("--bulk-studies", type=int, default=200, help="studies in the bulk C-MOVE/C-GET (200)")
    add("--database-url", default=None, metavar="URL", help="postgresql+psycopg URL (SQLite)")
    add("--work", type=Path, default=None, metavar="DIR", help="work folder, inputs reused")
    add("--keep", action="store_true", help="keep the work folder")
    add("--dcmtk", type=Path, default=Path("/usr/bin"), help="DCMTK's tools (/usr/bin)")
    args = parser.parse_args(argv)
    if args.instances < 2 * PER_SERIES or args.repeat < 1 or args.bulk_studies < 1:
        parser.error("--instances >= 10, --repeat >= 1 and --bulk-studies >= 1")
    if args.database_url and not args.database_url.startswith("postgresql+psycopg://"):
        parser.error("--database-url: expected postgresql+psycopg://USER@HOST:PORT/DB")
    return Options(
        args.instances,
        args.repeat,
        args.bulk_studies,
        args.database_url,
        args.work,
        args.keep,
        args.dcmtk,
    )


def progress(message: str) -> None:
    """Progress goes to stderr; the figures go to stdout."""
    print(f"[query] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    """Durations of one kind of operation, with the items each one returned or moved."""

    label: str
    seconds: list[float] = field(default_factory=list)
    items: list[int] = field(default_factory=list)

    def add(self, seconds: float, items: int) -> None:
        """One measured operation."""
        self.seconds.append(seconds)
        self.items.append(items)

    def latency_row(self) -> str:
        """| label | n | matches | median ms | p95 ms | max ms |"""
        ms = [value * 1000 for value in self.seconds]
        figures = (statistics.mean(self.items), percentile(ms, 50), percentile(ms, 95), max(ms))
        cells = [self.label, str(len(ms)), *(f"{value:.1f}" for value in figures)]
        return "| " + " | ".join(cells) + " |"

    def throughput_row(self) -> str:
        """| label | operations | instances | seconds | instances/s |"""
        total, items = sum(self.seconds), sum(self.items)
        cells = (self.label, str(len(self.seconds)), str(items), f"{total:.2f}")
        return "| " + " | ".join((*cells, f"{items / total:.1f}")) + " |"


class Checker(Protocol):
    """Where a wrong answer is recorded."""

    def check(self, condition: bool, message: str) -> None:
        """Record `message` as a problem unless `condition` holds."""


@dataclass
class Bench:
    """The running servers, the plan and what went wrong."""

    options: Options
    studies: list[Study]
    server: PacsdProcess
    destination: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, condition: bool, message: str) -> None:
        """Record a wrong answer."""
        if not condition:
            self.problems.append(message)


def associate(ae: AE, server: PacsdProcess) -> Association:
    """An association to pacsd with TCP_NODELAY, as the DCMTK clients run (benchmarks/dcmtk)."""
    return associate_to(ae, server.host, server.port, PACSD_AE)


def on_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN: TCP_NODELAY on the requester's socket (a delayed ACK costs ~40 ms per
    exchange otherwise, docs/dicom-notes.md)."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def associate_to(ae: AE, host: str, port: int, called_ae_title: str) -> Association:
    """An association to any SCP with TCP_NODELAY on the requester's socket."""
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, on_connection_open)]
    return ae.associate(host, port, ae_title=called_ae_title, evt_handlers=handlers)


def find_identifier(**values: str) -> Dataset:
    """A STUDY-level identifier asking for FIND_KEYS, with `values` as matching keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in FIND_KEYS:
        setattr(ds, keyword, values.get(keyword, ""))
    return ds


def timed_find(bench: Checker, assoc: Association, ds: Dataset) -> tuple[float, set[str]]:
    """One C-FIND: its duration and the Study Instance UIDs it returned."""
    found: set[str] = set()
    started = time.perf_counter()
    final = 0xFFFF
    for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        final = int(status.get("Status", 0xFFFF))
        if identifier is not None and final in (0xFF00, 0xFF01):
            found.add(str(identifier.StudyInstanceUID))
    seconds = time.perf_counter() - started
    bench.check(final == 0x0000, f"C-FIND final status 0x{final:04X}")
    return seconds, found


def find_cases(studies: Sequence[Study], repeat: int) -> Iterator[tuple[str, Dataset, set[str]]]:
    """(kind, identifier, expected study UIDs): wildcard and date range queries, alternating."""
    years = sorted({study.study_date[:4] for study in studies})
    for number in range(repeat):
        prefix = FAMILIES[number % len(FAMILIES)][:3]
        expected = {s.study_uid for s in studies if s.patient_name.startswith(prefix)}
        yield "PatientName wildcard", find_identifier(PatientName=f"{prefix}*"), expected
        month = f"{years[number % len(years)]}{number % 12 + 1:02d}"
        low, high = f"{month}01", f"{month}28"
        expected = {s.study_uid for s in studies if low <= s.study_date <= high}
        yield "StudyDate range", find_identifier(StudyDate=f"{low}-{high}"), expected


def bench_find(bench: Bench) -> list[Measured]:
    """C-FIND latency over one association."""
    results = {kind: Measured(kind) for kind in ("PatientName wildcard", "StudyDate range")}
    ae = AE(ae_title=CALLING_AE)
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, bench.server)
    if not assoc.is_established:
        raise SystemExit("pacsd refused the C-FIND association")
    try:
        for _kind, ds, _expected in find_cases(bench.studies, 1):  # warm-up, not measured
            timed_find(bench, assoc, ds)
        for kind, ds, expected in find_cases(bench.studies, bench.options.repeat):
            seconds, found = timed_find(bench, assoc, ds)
            bench.check(found == expected, f"{kind}: {len(found)} matches, {len(expected)} due")
            results[kind].add(seconds, len(found))
    finally:
        assoc.release()
    return list(results.values())


def move_identifier(studies: Sequence[Study]) -> Dataset:
    """A STUDY-level retrieve identifier listing the studies' UIDs."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = [study.study_uid for study in studies]
    return ds


def timed_move(bench: Checker, assoc: Association, studies: Sequence[Study]) -> tuple[float, int]:
    """One C-MOVE to storescp: duration and completed sub-operations (checked)."""
    expected = sum(len(study.sop_uids) for study in studies)
    started = time.perf_counter()
    final = Dataset()
    for status, _identifier in assoc.send_c_move(
        move_identifier(studies), REFERENCE_AE, StudyRootQueryRetrieveInformationModelMove
    ):
        final = status
    seconds = time.perf_counter() - started
    completed = int(final.get("NumberOfCompletedSuboperations", 0))
    code = int(final.get("Status", 0xFFFF))
    bench.check(
        code == 0x0000 and completed == expected,
        f"C-MOVE: status 0x{code:04X}, {completed} of {expected} completed",
    )
    return seconds, completed


def bulk(bench: Bench) -> list[Study]:
    """The studies of the bulk retrieve: spread over the archive."""
    count = min(bench.options.bulk_studies, len(bench.studies))
    step = len(bench.studies) / count
    return [bench.studies[int(number * step)] for number in range(count)]


def singles(bench: Bench) -> list[Study]:
    """The studies retrieved one at a time: --repeat of them, spread over the archive."""
    count = min(bench.options.repeat, len(bench.studies))
    return [bench.studies[(number * 7) % len(bench.studies)] for number in range(count)]


def bench_move(bench: Bench) -> list[Measured]:
    """C-MOVE of single studies and of the bulk list, to DCMTK's storescp."""
    one, many = Measured("C-MOVE, one study"), Measured("C-MOVE, bulk")
    ae = AE(ae_title=CALLING_AE)
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = associate(ae, bench.server)
    if not assoc.is_established:
        raise SystemExit("pacsd refused the C-MOVE association")
    try:
        for study in singles(bench):
            one.add(*timed_move(bench, assoc, [study]))
        before = reset_peak_rss(bench.server)
        many.add(*timed_move(bench, assoc, bulk(bench)))
        bench.notes.append(
            f"pacsd RSS {before / 1e6:.0f} MB before the bulk C-MOVE, "
            f"peak {peak_rss(bench.server) / 1e6:.0f} MB during it"
        )
    finally:
        assoc.release()
    moved = {uid for study in [*singles(bench), *bulk(bench)] for uid in study.sop_uids}
    arrived = {path.name.split(".", 1)[1] for path in bench.destination.iterdir()}
    bench.check(moved <= arrived, f"storescp lacks {len(moved - arrived)} moved instances")
    return [one, many]


def _status_kb(server: PacsdProcess, field_name: str) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/{server.process.pid}/status")


def reset_peak_rss(server: PacsdProcess) -> int:
    """Reset pacsd's peak RSS (Linux: clear_refs 5 resets VmHWM); its current RSS in bytes."""
    assert server.process is not None
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5\n")
    return _status_kb(server, "VmRSS")


def peak_rss(server: PacsdProcess) -> int:
    """pacsd's peak RSS in bytes since the last reset."""
    return _status_kb(server, "VmHWM")


def timed_get(bench: Bench, studies: Sequence[Study], folder: Path) -> tuple[float, int]:
    """One getscu run from pacsd into an empty `folder`: wall time and files received."""
    server = bench.server
    return getscu(bench.options.dcmtk, bench, (server.host, server.port, PACSD_AE), studies, folder)


def getscu(
    dcmtk: Path,
    bench: Checker,
    scp: tuple[str, int, str],
    studies: Sequence[Study],
    folder: Path,
) -> tuple[float, int]:
    """One getscu run from `scp` (host, port, AE title) into an empty `folder`: wall time and
    files received (checked, then removed). getscu receives PDUs of up to 128 KiB, as storescp
    does in the benchmarks (REFERENCE_MAX_PDU); its default is 16 KiB."""
    folder.mkdir(parents=True)
    host, port, called_ae_title = scp
    uids = "\\".join(study.study_uid for study in studies)
    command = [str(dcmtk / "getscu"), "-S", "-aet", CALLING_AE, "-aec", called_ae_title]
    command += ["-pdu", str(REFERENCE_MAX_PDU), "-od", str(folder)]
    command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uids}", host, str(port)]
    started = time.perf_counter()
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
        env=dcmtk_environment(),
    )
    seconds = time.perf_counter() - started
    received = {path.name.split(".", 1)[1] for path in folder.iterdir()}  # "CT.<SOP UID>"
    expected = {uid for study in studies for uid in study.sop_uids}
    # PYNETDICOM_NOTES.md: getscu 3.6.7 may exit non-zero after everything arrived; the
    # files it wrote are what counts.
    bench.check(
        received == expected,
        f"C-GET: {len(received & expected)} of {len(expected)} received, "
        f"{len(received - expected)} unexpected (getscu exit {completed.returncode})",
    )
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, len(received)


def bench_get(bench: Bench, work: Path) -> list[Measured]:
    """C-GET of single studies and of the bulk list by DCMTK's getscu."""
    one, many = Measured("C-GET (getscu), one study"), Measured("C-GET (getscu), bulk")
    for number, study in enumerate(singles(bench)):
        one.add(*timed_get(bench, [study], work / "get" / f"one-{number}"))
    many.add(*timed_get(bench, bulk(bench), work / "get" / "bulk"))
    return [one, many]


def ingest(bench: Bench, files: Sequence[Path], run_dir: Path, database_url: str) -> str:
    """Send the archive with storescu; the ingest rate as a line of the report."""
    storescu = bench.options.dcmtk / "storescu"
    parts = [files[k::INGEST_ASSOCIATIONS] for k in range(INGEST_ASSOCIATIONS)]
    client = run_storescu(storescu, PACSD_AE, bench.server.port, parts, run_dir, CLIENT_TIMEOUT_S)
    stored = count_instances(database_url)
    bench.check(stored == len(files), f"ingest: {stored} of {len(files)} indexed")
    bench.check(client.successes == len(files), f"ingest: {client.successes} successes")
    if stored != len(files):
        raise SystemExit("\n".join(bench.problems))
    rate = len(files) / client.seconds
    return (
        f"ingest of {len(files)} instances by storescu over {INGEST_ASSOCIATIONS} associations in "
        f"{client.seconds:.1f} s: {rate:.0f} instances/s"
    )


def run(options: Options, work: Path) -> tuple[list[Measured], list[Measured], Bench]:
    """Build the archive, start the destination and pacsd, ingest, then measure."""
    studies = plan(options.instances)
    files = write_archive(work / "inputs" / f"archive-{options.instances}", studies)
    run_dir = work / "runs" / "query"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "received").mkdir(parents=True)
    storescp = options.dcmtk / "storescp"
    destination = ReferenceServer.start(storescp, run_dir / "received", run_dir / "storescp.log")
    try:
        with index_database(options.database_url, run_dir) as database_url:
            peers = [{"ae_title": REFERENCE_AE, "host": HOST, "port": destination.port}]
            config = base_config(run_dir, database_url=database_url, peers=peers)
            server = PacsdProcess.from_config(run_dir, config)
            bench = Bench(options, studies, server, run_dir / "received")
            try:
                server.start()
                progress(f"ingesting {len(files)} instances")
                bench.notes.append(ingest(bench, files, run_dir, database_url))
                progress("C-FIND")
                finds = bench_find(bench)
                progress("C-MOVE")
                retrieves = bench_move(bench)
                progress("C-GET")
                retrieves += bench_get(bench, run_dir)
            finally:
                stop_pacsd(server)
                (run_dir / "pacsd.log").write_text(server.output() + "\n", encoding="utf-8")
    finally:
        destination.stop()
    return finds, retrieves, bench


def print_report(
    options: Options, notes: list[str], finds: list[Measured], retrieves: list[Measured]
) -> None:
    """The environment, then Markdown tables."""
    packages = ("pacsd", "pynetdicom", "pydicom", "SQLAlchemy")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    database = "sqlite (a new file)"
    if options.database_url:
        database = f"postgresql at {psycopg_conninfo(options.database_url)} (a new database)"
    print("pacsd query/retrieve benchmark")
    print(f"  cpus      {os.cpu_count()} ({platform.machine()}, {platform.platform()})")
    print(f"  packages  {versions}")
    print(f"  dcmtk     {tool_version(options.dcmtk / 'storescu')}")
    print(f"  database  {database}")
    print(f"  archive   {options.instances} instances of {PIXELS}x{PIXELS}x16 bits")
    for note in notes:
        print(f"  measured  {note}")
    print()
    print("| C-FIND, STUDY level, one association | queries | matches (mean) | median ms | p95 ms "
          "| max ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for measured in finds:
        print(measured.latency_row())
    print()
    print("| retrieve | operations | instances | seconds | instances/s |")
    print("|---|---:|---:|---:|---:|")
    for measured in retrieves:
        print(measured.throughput_row())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every answer was right, 1 otherwise."""
    options = parse_args(argv)
    with work_folder(options.work, options.keep, "query") as work:
        finds, retrieves, bench = run(options, work)
    print_report(options, bench.notes, finds, retrieves)
    for problem in bench.problems:
        print(f"problem: {problem}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
