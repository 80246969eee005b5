"""`python -m tests.perf`: the goals of issue 16, pacsd beside DCMTK storescp and Orthanc.

One command generates the inputs, starts each server fresh for each measurement on 127.0.0.1
(pacsd in its default configuration: files fsynced, index committed before the answer;
storescp: files only; Orthanc 1.10: files and its SQLite index), alternates the servers over
--repeat repetitions and prints a Markdown table of the medians, the ratios to each peer and
whether each goal is met; then the machine's loopback and disk limits, the versions, and the
problems. Exit code 1 when a correctness check failed (an instance not stored, a wrong C-FIND
answer...), because the figures are then not valid; a goal not met does not change it.

    .venv/bin/python -m tests.perf            # by hand: the full run
    .venv/bin/python -m tests.perf --smoke    # CI: tiny sizes, one repetition
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import orthanc
from benchmarks.ingest import (
    BENCH_SIZE,
    SMALL_SIZE,
    Options,
    association_counts,
    work_folder,
)
from tests.perf import associations, dicomweb, idle, ingest, latency, machine, memory, retrieval
from tests.perf.goals import GoalRow

WORKERS_ENV = "PACSD_NETWORK__WORKERS"
SECTIONS = (
    "ingest", "associations", "start-up", "idle", "memory", "small-find", "retrieval", "dicomweb",
)  # fmt: skip
PEER_ORDER = ("storescp", "orthanc")
Section = Callable[[Path], tuple[list[GoalRow], list[str]]]


@dataclass(frozen=True)
class Settings:
    """The command line, with --smoke's or the full run's defaults filled in."""

    smoke: bool
    repeat: int
    count: int
    small_count: int
    large_mb: int
    echo_seconds: float
    idle_associations: int
    idle_seconds: float
    small_archive: int
    queries: int
    find_instances: tuple[int, ...] | None
    skip_retrieval: bool
    only: tuple[str, ...]
    work: Path | None
    keep: bool
    timeout: float
    dcmtk: Path
    workers: int

    def ingest_options(self) -> Options:
        """benchmarks.ingest's options for the runs this benchmark makes of it."""
        return Options(
            count=self.count,
            associations=(1, 8),
            sizes=(BENCH_SIZE, SMALL_SIZE),
            reference=True,
            orthanc=True,
            database_url=None,
            keep=self.keep,
            work=self.work,
            timeout=self.timeout,
            dcmtk=self.dcmtk,
        )


def argument_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf",
        description="The performance goals of issue 16: pacsd beside DCMTK storescp and Orthanc.",
        epilog="Exit code 1 when a correctness check failed (the figures are then not valid); "
        "goals not met do not change it.",
    )
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny sizes and one repetition (CI)")
    add(
        "--only",
        metavar="SECTION[,SECTION...]",
        help=f"measure only these sections (of {', '.join(SECTIONS)}); not a full run",
    )
    add("--repeat", type=int, help="repetitions of each measurement (3; --smoke 1)")
    add("--count", type=int, help="0.5 MB CT instances per ingest run (400; --smoke 16)")
    add("--small-count", type=int, help="64x64 CT instances per ingest run (1000; --smoke 16)")
    add("--large-mb", type=int, help="MiB of pixel data of the large instance (1024; --smoke 50)")
    add("--echo-seconds", type=float, help="seconds per association-rate run (3; --smoke 0.5)")
    add("--idle-associations", type=int, help="idle associations opened (100; --smoke 10)")
    add("--idle-seconds", type=float, help="seconds of each idle CPU measurement (5; --smoke 2)")
    add("--small-archive", type=int, help="instances of the per-query C-FIND (500; --smoke 60)")
    add("--queries", type=int, help="per-query C-FIND: queries per server and run (200; 20)")
    add(
        "--find-instances",
        type=association_counts,
        metavar="N[,N...]",
        help="archive sizes of the retrieval goals (10000,100000; --smoke 60)",
    )
    add(
        "--skip-retrieval",
        action="store_true",
        help="skip the C-FIND/C-GET/C-MOVE goals on the --find-instances archives (the "
        "per-query C-FIND on the small archive still runs)",
    )
    add("--work", type=Path, metavar="DIR", help="work folder; inputs are cached there")
    add("--keep", action="store_true", help="keep the work folder and every run's folder")
    add("--timeout", type=float, default=600.0, help="seconds per storescu run (600)")
    add("--dcmtk", type=Path, default=Path("/usr/bin"), help="DCMTK's tools (/usr/bin)")
    add(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="pacsd's network.workers, as an operator sets it: one per core (this machine's "
        "CPU count)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Parse, fill in the defaults of the run's kind, validate."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)

    def pick(value: float | None, full: float, small: float) -> float:
        return value if value is not None else (small if smoke else full)

    settings = Settings(
        smoke=smoke,
        repeat=int(pick(args.repeat, 3, 1)),
        count=int(pick(args.count, 400, memory.CONCURRENT_ASSOCIATIONS)),
        small_count=int(pick(args.small_count, 1000, 16)),
        large_mb=int(pick(args.large_mb, 1024, 50)),
        echo_seconds=pick(args.echo_seconds, 3.0, 0.5),
        idle_associations=int(pick(args.idle_associations, 100, 10)),
        idle_seconds=pick(args.idle_seconds, 5.0, 2.0),
        small_archive=int(pick(args.small_archive, 500, 60)),
        queries=int(pick(args.queries, 200, 20)),
        find_instances=args.find_instances or ((60,) if smoke else None),
        skip_retrieval=args.skip_retrieval,
        only=tuple(args.only.split(",")) if args.only else (),
        work=args.work,
        keep=args.keep,
        timeout=args.timeout,
        dcmtk=args.dcmtk,
        workers=args.workers,
    )
    unknown = set(settings.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: no section {', '.join(sorted(unknown))} ({', '.join(SECTIONS)})")
    if settings.workers < 1:
        parser.error("--workers must be at least 1")
    if settings.repeat < 1 or settings.large_mb < 1 or settings.echo_seconds <= 0:
        parser.error("--repeat, --large-mb and --echo-seconds must be positive")
    if settings.count < memory.CONCURRENT_ASSOCIATIONS or settings.small_count < 8:
        parser.error(f"--count >= {memory.CONCURRENT_ASSOCIATIONS} and --small-count >= 8")
    if not 1 <= settings.idle_associations <= idle.MAX_ASSOCIATIONS:
        parser.error(f"--idle-associations must be 1 to {idle.MAX_ASSOCIATIONS}")
    if settings.idle_seconds <= 0 or settings.queries < 1 or settings.small_archive < 10:
        parser.error("--idle-seconds > 0, --queries >= 1 and --small-archive >= 10")
    return settings


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)


def retrieval_options(settings: Settings) -> retrieval.RetrievalOptions:
    """The retrieval goals' options: SMOKE's in --smoke, with the pass-through options."""
    options = retrieval.SMOKE if settings.smoke else retrieval.RetrievalOptions()
    if settings.find_instances:
        options = dataclasses.replace(options, find_instances=settings.find_instances)
    return dataclasses.replace(options, dcmtk=settings.dcmtk, keep=settings.keep)


def small_find_options(settings: Settings) -> latency.SmallFindOptions:
    """The per-query C-FIND's options, from the command line."""
    return latency.SmallFindOptions(
        instances=settings.small_archive,
        queries=settings.queries,
        repeat=settings.repeat,
        dcmtk=settings.dcmtk,
        keep=settings.keep,
    )


def sections(settings: Settings, notes: list[str]) -> dict[str, Section]:
    """What to measure, in order; each returns (rows, problems)."""
    options = settings.ingest_options()
    counts = {BENCH_SIZE: settings.count, SMALL_SIZE: settings.small_count}
    storescp = settings.dcmtk / "storescp"
    chosen: dict[str, Section] = {
        "ingest": lambda work: ingest.ingest_goals(options, work, counts, settings.repeat),
        "associations": lambda work: associations.association_goals(
            work, storescp, settings.repeat, settings.echo_seconds, settings.keep
        ),
        "start-up": lambda work: latency.startup_goals(work, settings.repeat, settings.keep),
        "idle": lambda work: idle.idle_goals(
            work,
            settings.idle_associations,
            settings.idle_seconds,
            settings.repeat,
            settings.keep,
        ),
        "memory": lambda work: memory.memory_goals(
            options, work, settings.count, settings.large_mb, settings.repeat
        ),
        "small-find": lambda work: latency.small_find_goals(work, small_find_options(settings)),
    }
    if settings.skip_retrieval:
        notes.append(
            "retrieval goals on the --find-instances archives (C-FIND, C-GET, C-MOVE, ingest "
            "into a full archive) skipped"
        )
    else:
        retrieve = retrieval_options(settings)
        chosen["retrieval"] = lambda work: retrieval.retrieval_goals(work, retrieve)
    # Issue 18: QIDO-RS and WADO-RS beside Orthanc's DICOMweb plugin, on the first
    # --find-instances archive (10,000 instances by default).
    web = retrieval_options(settings)
    chosen["dicomweb"] = lambda work: dicomweb.dicomweb_goals(
        work, web, 3 if settings.smoke else 20
    )
    return chosen


def run_sections(chosen: dict[str, Section], work: Path) -> tuple[list[GoalRow], list[str]]:
    """Every section; one that raises is a problem, and the others still run."""
    rows: list[GoalRow] = []
    problems: list[str] = []
    for name, section in chosen.items():
        progress(f"{name} goals")
        started = time.monotonic()
        try:
            section_rows, section_problems = section(work)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            problems.append(f"{name}: stopped by {exc!r} (traceback on stderr)")
            continue
        progress(f"{name} goals: {time.monotonic() - started:,.1f} s")
        rows.extend(section_rows)
        problems.extend(section_problems)
    return rows, problems


def save_logs(work: Path) -> Path | None:
    """Copy the logs of the run folders still there (those with problems) out of `work`."""
    runs = work / "runs"
    logs = sorted(runs.rglob("*.log")) if runs.is_dir() else []
    if not logs:
        return None
    saved = Path(tempfile.mkdtemp(prefix="pacsd-perf-logs-"))
    for log in logs:
        target = saved / log.relative_to(runs)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, target)
    return saved


def number(value: float | None) -> str:
    """A figure with 3 significant digits or so, "-" when not measured."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def target_text(row: GoalRow) -> str:
    """The goal as the issue states it."""
    if row.limit is not None:
        sign = ">=" if row.higher_is_better else "<="
        return f"{sign} {row.limit:g} {row.unit}"
    if row.target_peer is not None and row.target_ratio is not None:
        return f">= {row.target_ratio:g}x {row.target_peer}"
    return "-"


def met_text(row: GoalRow) -> str:
    """yes / **no** / - (not measured)."""
    met = row.met()
    return "-" if met is None else ("yes" if met else "**no**")


def markdown_table(rows: Sequence[GoalRow]) -> list[str]:
    """The table: one line per row, peers in a fixed order then any other."""
    peers = [peer for peer in PEER_ORDER if any(peer in row.peers for row in rows)]
    peers += sorted({peer for row in rows for peer in row.peers} - set(peers))
    header = ["goal", "unit", "pacsd", *peers, *(f"pacsd/{peer}" for peer in peers)]
    header += ["target", "met"]
    body = [
        [
            row.goal,
            row.unit,
            number(row.pacsd),
            *(number(row.peers.get(peer)) for peer in peers),
            *(ratio_text(row.ratio(peer)) for peer in peers),
            target_text(row),
            met_text(row),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = range(2, len(header) - 2)

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i in numeric else "-" * w for i, w in enumerate(widths)]
    return [line(header), line(rule), *(line(cells) for cells in body)]


def ratio_text(ratio: float | None) -> str:
    """A ratio as "1.23x"."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def print_report(
    settings: Settings,
    rows: Sequence[GoalRow],
    limits: machine.MachineLimits | None,
    versions: Sequence[str],
    notes: Sequence[str],
    problems: Sequence[str],
) -> None:
    """The table, then the notes, machine limits, versions and problems."""
    kind = "smoke run (--smoke): sizes far below the goals'" if settings.smoke else "full run"
    print(f"## pacsd performance goals (issue 16): {kind}, median of {settings.repeat} run(s)\n")
    print("\n".join(markdown_table(rows)))
    print(
        "\npacsd/peer > 1 means pacsd is better (where lower is better: RSS, latency, CPU, "
        "start-up time, the peer's figure over pacsd's)."
    )
    seen: set[str] = set()
    for row in rows:
        if row.note and row.goal not in seen:
            seen.add(row.goal)
            print(f"- {row.goal}: {row.note}")
    for note in notes:
        print(f"- {note}")
    print("\n### Machine limits (not goals)\n")
    for line in limits.lines() if limits else ["not measured"]:
        print(f"- {line}")
    print("\n### Versions\n")
    for line in versions:
        print(f"- {line}")
    print("\n### Problems\n")
    for problem in problems or ["none: every correctness check passed"]:
        print(f"- {'PROBLEM: ' if problems else ''}{problem}")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run every goal; 0 when every correctness check passed, 1 otherwise."""
    settings = parse_args(argv)
    # Every pacsd this run starts (tests.harness passes the environment on) uses it.
    os.environ[WORKERS_ENV] = str(settings.workers)
    orthanc.ensure_installed()
    versions = machine.versions(settings.dcmtk / "storescu", orthanc.ORTHANC)  # DCMTK's or exit
    started = time.monotonic()
    notes: list[str] = []
    limits: machine.MachineLimits | None = None
    with work_folder(settings.work, settings.keep, name="perf") as work:
        progress("machine limits")
        try:
            limits = machine.measure(work, settings.smoke)
        except OSError as exc:
            notes.append(f"machine limits not measured: {exc!r}")
        chosen = sections(settings, notes)
        if settings.only:
            chosen = {name: chosen[name] for name in chosen if name in settings.only}
            notes.append(f"only the sections {', '.join(chosen)}: not a full run")
        rows, problems = run_sections(chosen, work)
        if problems and not settings.keep and (saved := save_logs(work)) is not None:
            notes.append(f"logs of the runs with problems: {saved}")
    notes.append(f"pacsd ran with network.workers = {settings.workers}")
    notes.append(f"whole run: {time.monotonic() - started:,.0f} s")
    print_report(settings, rows, limits, versions, notes, problems)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
