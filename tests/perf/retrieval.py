"""Retrieval goals of issue 16 (4 and 5): C-FIND latency, C-GET and C-MOVE; ingest into a full
archive for information (a goal of issue 6 that issue 16 does not set).

pacsd and Orthanc run side by side on the same generated archive (benchmarks/query.py's plan:
32x32x16-bit CT and MR instances, five per study, two studies per patient), both fed the same
files by DCMTK's storescu over several associations, on 127.0.0.1.

- C-FIND, Study Root, STUDY level, one association per server, PatientName wildcard and
  StudyDate range: latency from request to final response. Queries alternate between the
  servers (which one goes first alternates too); every answer is compared with the plan.
- Ingest: instances/s of a batch of new instances (storescu, K associations) into empty
  servers, then into the servers holding the archive: the ratio of the two, for information
  (issue 6 asked for >= 0.85; issue 16 sets no goal for it).
- C-MOVE (pynetdicom requester, DCMTK storescp destination) and C-GET (DCMTK getscu) of one
  study and of the whole archive (capped at RetrievalOptions.bulk_cap instances): instances/s;
  the instances that arrived are compared with the plan.

A wrong answer is a problem: the figures of a wrong answer are not valid.
Alone: python -m tests.perf.retrieval --smoke --work DIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from benchmarks import orthanc
from benchmarks.dcmtk import HOST, REFERENCE_AE, ReferenceServer, run_storescu
from benchmarks.ingest import count_instances, stop_pacsd
from benchmarks.query import (
    CALLING_AE,
    DIMSE_TIMEOUT_S,
    PER_SERIES,
    Study,
    associate_to,
    find_cases,
    getscu,
    plan,
    timed_find,
    timed_move,
    write_archive,
)
from tests.harness import PacsdProcess, base_config
from tests.perf.goals import GoalRow, median

CLIENT_TIMEOUT_S = 1800.0
CHUNK_STUDIES = 500  # study UIDs per bulk C-MOVE / C-GET request: a UI list well under 64 KiB
ROUND_FILES = 20_000  # files per round of storescu processes: ~400 KiB of arguments each
BATCH_FIRST_STUDY = 10_000_000  # the ingest batches' study numbers, beyond any archive's
ISSUE_6_INGEST_RATIO = 0.85  # full / empty: issue 6's goal, shown in the note only


@dataclass(frozen=True)
class RetrievalOptions:
    """What to measure, and how often."""

    find_instances: tuple[int, ...] = (10_000, 100_000)  # archive sizes
    repeat: int = 20  # per server: each C-FIND kind, one-study C-MOVE and C-GET
    bulk_repeat: int = 2  # per server: whole-archive C-MOVE and C-GET
    ingest_repeat: int = 5  # ingest batches per server, into empty and into full archives
    bulk_cap: int = 10_000  # instances of a "whole archive" retrieve at most
    ingest_batch: int = 2_000  # new instances per ingest batch
    ingest_associations: int = 4  # storescu processes, for the archive and the batches
    case_insensitive_pn: bool = False  # PN matching of both servers (see `servers`)
    dcmtk: Path = Path("/usr/bin")
    keep: bool = False  # keep the servers' folders (kept anyway after a problem)


SMOKE = RetrievalOptions(
    find_instances=(60,), repeat=1, bulk_repeat=1, ingest_repeat=1, bulk_cap=60, ingest_batch=40
)


@dataclass
class Problems:
    """Wrong answers, each prefixed with what was asked of whom."""

    prefix: str = ""
    found: list[str] = field(default_factory=list)

    def check(self, condition: bool, message: str) -> None:
        """Record `message` unless `condition` holds."""
        if not condition:
            self.found.append(f"{self.prefix}{message}")

    def about(self, subject: str) -> Problems:
        """The same list, with `subject` prefixed to what is recorded through it."""
        return Problems(f"{self.prefix}{subject}: ", self.found)


@dataclass(frozen=True)
class Target:
    """One server under test: its port, AE title and instance count."""

    name: str
    port: int
    ae_title: str
    count: Callable[[], int]

    @property
    def scp(self) -> tuple[str, int, str]:
        """(host, port, AE title)."""
        return HOST, self.port, self.ae_title


@dataclass
class Bench:
    """Both servers holding one archive, and what the measurements share."""

    options: RetrievalOptions
    problems: Problems
    targets: list[Target]
    run_dir: Path
    studies: list[Study] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Instances in the archive."""
        return len(self.studies) * PER_SERIES


@dataclass(frozen=True)
class Batches:
    """The ingest batches (one per repetition) and their rates into empty servers."""

    files: list[list[Path]]
    empty: dict[str, list[float]]


def progress(message: str) -> None:
    """Progress goes to stderr."""
    print(f"[retrieval] {message}", file=sys.stderr, flush=True)


def alternate(targets: Sequence[Target], number: int) -> list[Target]:
    """The targets in turn, the first one changing with every repetition `number`."""
    shift = number % len(targets)
    return [*targets[shift:], *targets[:shift]]


@contextmanager
def servers(
    run_dir: Path, options: RetrievalOptions, destination: int | None
) -> Iterator[list[Target]]:
    """pacsd and Orthanc, empty, with storescp on port `destination` as C-MOVE destination.

    PS3.4 C.2.2.2.1 lets PN matching ignore case: pacsd's default is exact, Orthanc's is
    case-insensitive (CaseSensitivePN false); both servers are given the same behaviour.
    """
    destinations = {} if destination is None else {REFERENCE_AE: destination}
    peers = [{"ae_title": ae, "host": HOST, "port": port} for ae, port in destinations.items()]
    database_url = f"sqlite:///{run_dir / 'pacsd' / 'index.sqlite'}"
    query = {"person_name_case_insensitive": options.case_insensitive_pn}
    config = base_config(run_dir / "pacsd", database_url, peers=peers, query=query)
    pacsd = PacsdProcess.from_config(run_dir / "pacsd", config)
    settings = orthanc.query_retrieve_settings(destinations, not options.case_insensitive_pn)
    with ExitStack() as stack:
        stack.callback(save_log_and_stop, pacsd, run_dir / "pacsd.log")
        pacsd.start()
        reference = orthanc.OrthancServer.start(
            orthanc.ORTHANC, run_dir / "orthanc", run_dir / "orthanc.log", settings
        )
        stack.callback(reference.stop)
        yield [
            Target("pacsd", pacsd.port, "PACSD", lambda: count_instances(database_url)),
            Target("orthanc", reference.port, reference.ae_title, reference.count_instances),
        ]


def save_log_and_stop(server: PacsdProcess, log_path: Path) -> None:
    """Stop pacsd by its pid and keep what it logged."""
    stop_pacsd(server)
    log_path.write_text(server.output() + "\n", encoding="utf-8")


def ingest_rate(bench: Bench, target: Target, files: Sequence[Path], name: str) -> float:
    """Send `files` with K storescu processes at once, in rounds of ROUND_FILES files at most
    (the command lines' limit); instances/s (every instance checked indexed)."""
    before = target.count()
    k = bench.options.ingest_associations
    storescu = bench.options.dcmtk / "storescu"
    seconds, successes = 0.0, 0
    for start in range(0, len(files), ROUND_FILES):
        log_dir = bench.run_dir / f"storescu-{name}-{target.name}-{start}"
        log_dir.mkdir(parents=True)
        batch = files[start : start + ROUND_FILES]
        parts = [batch[part::k] for part in range(k)]
        client = run_storescu(
            storescu, target.ae_title, target.port, parts, log_dir, CLIENT_TIMEOUT_S
        )
        seconds, successes = seconds + client.seconds, successes + client.successes
    stored = target.count() - before
    check = bench.problems.about(f"{target.name} ingest of {len(files)} ({name})")
    check.check(successes == len(files), f"{successes} Success responses")
    check.check(stored == len(files), f"{stored} new instances indexed")
    return len(files) / seconds


def batch_files(work: Path, options: RetrievalOptions) -> list[list[Path]]:
    """The ingest batches, one per repetition: new instances sharing no UID with any archive."""
    studies_per_batch = -(-options.ingest_batch // PER_SERIES)
    batches: list[list[Path]] = []
    for number in range(options.ingest_repeat):
        first = BATCH_FIRST_STUDY + number * studies_per_batch
        folder = work / "inputs" / f"batch-{first}-{options.ingest_batch}"
        batches.append(write_archive(folder, plan(options.ingest_batch, first)))
    return batches


def ingest_rates(
    bench: Bench, batches: Sequence[Sequence[Path]], name: str
) -> dict[str, list[float]]:
    """Each batch into each server, which one goes first alternating; instances/s."""
    rates: dict[str, list[float]] = {target.name: [] for target in bench.targets}
    for number, batch in enumerate(batches):
        for target in alternate(bench.targets, number):
            progress(f"{target.name}: {len(batch)} instances into the {name} archive")
            rates[target.name].append(ingest_rate(bench, target, batch, f"{name}-{number}"))
    return rates


def empty_rates(
    work: Path, options: RetrievalOptions, batches: list[list[Path]], problems: Problems
) -> dict[str, list[float]]:
    """Ingest rates into empty servers: fresh pacsd and Orthanc for each batch."""
    rates: dict[str, list[float]] = {}
    for number, batch in enumerate(batches):
        run_dir = work / "runs" / f"retrieval-empty-{number}"
        shutil.rmtree(run_dir, ignore_errors=True)
        with servers(run_dir, options, None) as targets:
            bench = Bench(options, problems, alternate(targets, number), run_dir)
            for name, found in ingest_rates(bench, [batch], "empty").items():
                rates.setdefault(name, []).extend(found)
        tidy(run_dir, options, problems)
    return rates


def tidy(run_dir: Path, options: RetrievalOptions, problems: Problems) -> None:
    """Remove a run's folder unless asked to keep it or something went wrong."""
    if not options.keep and not problems.found:
        shutil.rmtree(run_dir, ignore_errors=True)


def find_rows(bench: Bench) -> list[GoalRow]:
    """C-FIND latency, one association per server, queries alternating between servers."""
    ae = AE(ae_title=CALLING_AE)
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    samples: dict[str, dict[str, list[float]]] = {}
    matches: dict[str, list[int]] = {}
    cases = [*find_cases(bench.studies, 1), *find_cases(bench.studies, bench.options.repeat)]
    with associations(ae, bench.targets) as assocs:
        for number, (kind, ds, expected) in enumerate(cases):
            for target in alternate(bench.targets, number // 2):
                check = bench.problems.about(f"{target.name} C-FIND {kind}")
                seconds, found = timed_find(check, assocs[target.name], ds)
                check.check(found == expected, mismatch(ds, found, expected))
                if number >= 2:  # the first query of each kind warms up, unmeasured
                    samples.setdefault(kind, {}).setdefault(target.name, []).append(seconds * 1e3)
                    matches.setdefault(kind, []).append(len(expected))
    pn = "case-insensitive" if bench.options.case_insensitive_pn else "exact"
    return [
        compare_row(
            f"C-FIND study, {kind}, {bench.size:,} instances",
            "ms",
            by_target,
            higher_is_better=False,
            note=f"{sum(matches[kind]) / len(matches[kind]):.0f} matches (mean), one "
            f"association each; PN matching {pn} in both",
        )
        for kind, by_target in samples.items()
    ]


def mismatch(ds: Dataset, found: set[str], expected: set[str]) -> str:
    """What a wrong C-FIND answer lacked and added."""
    keys = f"PatientName={ds.PatientName!s} StudyDate={ds.StudyDate!s}"
    missing, extra = sorted(expected - found), sorted(found - expected)
    return (
        f"{keys}: {len(found)} matches, {len(expected)} due; "
        f"missing {len(missing)} {missing[:3]}, unexpected {len(extra)} {extra[:3]}"
    )


@contextmanager
def associations(ae: AE, targets: Sequence[Target]) -> Iterator[dict[str, Association]]:
    """One established association per target, released at the end."""
    opened: dict[str, Association] = {}
    try:
        for target in targets:
            assoc = associate_to(ae, HOST, target.port, target.ae_title)
            if not assoc.is_established:
                raise RuntimeError(f"{target.name} refused the association")
            opened[target.name] = assoc
        yield opened
    finally:
        for assoc in opened.values():
            if assoc.is_established:
                assoc.release()


def compare_row(
    goal: str, unit: str, samples: dict[str, list[float]], higher_is_better: bool, note: str
) -> GoalRow:
    """A row judged against Orthanc: pacsd at least as good (ratio 1.0)."""
    return GoalRow(
        goal=goal,
        unit=unit,
        pacsd=median(samples.get("pacsd", [])),
        peers={"orthanc": median(samples.get("orthanc", []))},
        higher_is_better=higher_is_better,
        target_peer="orthanc",
        target_ratio=1.0,
        samples=samples,
        note=note,
    )


def chunks(studies: Sequence[Study]) -> list[Sequence[Study]]:
    """`studies` in requests of CHUNK_STUDIES at most."""
    return [studies[i : i + CHUNK_STUDIES] for i in range(0, len(studies), CHUNK_STUDIES)]


def move(bench: Bench, target: Target, studies: Sequence[Study]) -> float:
    """C-MOVE `studies` (in chunks, one association) to storescp; seconds (arrivals checked)."""
    ae = AE(ae_title=CALLING_AE)
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    check = bench.problems.about(f"{target.name} C-MOVE of {len(studies)} studies")
    with associations(ae, [target]) as assocs:
        seconds = sum(timed_move(check, assocs[target.name], part)[0] for part in chunks(studies))
    received = bench.run_dir / "received"
    arrived = {path.name.split(".", 1)[1] for path in received.iterdir()}  # "CT.<SOP UID>"
    expected = {uid for study in studies for uid in study.sop_uids}
    check.check(arrived == expected, f"{len(arrived & expected)} of {len(expected)} arrived")
    for path in received.iterdir():
        path.unlink()
    return seconds


def get(bench: Bench, target: Target, studies: Sequence[Study]) -> float:
    """C-GET `studies` with getscu, one process per chunk; seconds (files checked)."""
    check = bench.problems.about(f"{target.name} C-GET of {len(studies)} studies")
    folder, dcmtk = bench.run_dir / "get", bench.options.dcmtk
    return sum(
        getscu(dcmtk, check, target.scp, part, folder / str(number))[0]
        for number, part in enumerate(chunks(studies))
    )


def retrieve_rows(bench: Bench) -> list[GoalRow]:
    """C-MOVE and C-GET of one study, then of the whole archive (capped), in instances/s."""
    studies, options = bench.studies, bench.options
    singles = [[studies[(number * 7) % len(studies)]] for number in range(options.repeat)]
    count = min(len(studies), options.bulk_cap // PER_SERIES)
    whole = [studies[int(number * len(studies) / count)] for number in range(count)]
    scope = "whole archive" if len(whole) == len(studies) else "archive, capped"
    rows: list[GoalRow] = []
    for operation, timed in (("C-MOVE", move), ("C-GET", get)):
        for label, lists in (("one study", singles), (scope, [whole] * options.bulk_repeat)):
            progress(f"{operation}, {label}, archive of {bench.size}")
            samples: dict[str, list[float]] = {}
            for number, chosen in enumerate(lists):
                for target in alternate(bench.targets, number):
                    rate = len(chosen) * PER_SERIES / timed(bench, target, chosen)
                    samples.setdefault(target.name, []).append(rate)
            note = retrieve_note(operation, len(lists[0]), bench.size)
            goal = f"{operation} {label}, {bench.size:,} instances"
            rows.append(compare_row(goal, "instances/s", samples, True, note))
    return rows


def retrieve_note(operation: str, studies: int, size: int) -> str:
    """How a retrieve row was measured."""
    if operation == "C-MOVE":
        client = "pynetdicom requester, DCMTK storescp destination (--fork)"
    else:
        client = "DCMTK getscu (-pdu 131072), process wall time: start-up included"
    if studies == 1:
        return f"{PER_SERIES} instances; {client}"
    requests = -(-studies // CHUNK_STUDIES)
    return (
        f"{studies} studies, {studies * PER_SERIES} of {size} instances, in {requests} "
        f"request(s) of <= {CHUNK_STUDIES} study UIDs; {client}"
    )


def ingest_row(
    bench: Bench, empty: dict[str, list[float]], full: dict[str, list[float]]
) -> GoalRow:
    """Rate into the full archive / rate into an empty one, for information: issue 16 sets no
    goal for it (issue 6 asked for at least 0.85)."""
    ratios: dict[str, list[float]] = {}
    for name, rates in full.items():
        base = median(empty.get(name, []))
        ratios[name] = [rate / base for rate in rates] if base else []
    figures = ", ".join(
        f"{name} {median(empty.get(name, [])) or 0:.0f} -> {median(rates) or 0:.0f}"
        for name, rates in full.items()
    )
    options = bench.options
    return GoalRow(
        goal=f"ingest rate at {bench.size:,} instances / empty",
        unit="ratio",
        pacsd=median(ratios["pacsd"]),
        peers={"orthanc": median(ratios["orthanc"])},
        samples=ratios,
        note=f"information, no goal in issue 16 (issue 6: >= {ISSUE_6_INGEST_RATIO}); "
        f"{options.ingest_repeat} batch(es) of {options.ingest_batch} new instances, "
        f"storescu K={options.ingest_associations}; "
        f"instances/s empty -> full: {figures}",
    )


def archive_rows(
    work: Path, size: int, options: RetrievalOptions, batches: Batches, problems: Problems
) -> list[GoalRow]:
    """Every goal on an archive of `size` instances held by both servers; the batches go
    into the full servers last, as they grow the archive."""
    studies = plan(size)
    files = write_archive(work / "inputs" / f"archive-{size}", studies)
    run_dir = work / "runs" / f"retrieval-archive-{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "received").mkdir(parents=True)
    storescp = options.dcmtk / "storescp"
    destination = ReferenceServer.start(storescp, run_dir / "received", run_dir / "storescp.log")
    try:
        with servers(run_dir, options, destination.port) as targets:
            bench = Bench(options, problems, targets, run_dir, studies)
            for target in targets:
                progress(f"{target.name}: archive of {len(files)} instances")
                rate = ingest_rate(bench, target, files, "archive")
                progress(f"{target.name}: {rate:.0f} instances/s")
            rows = [*find_rows(bench), *retrieve_rows(bench)]
            full = ingest_rates(bench, batches.files, "full")
            rows.append(ingest_row(bench, batches.empty, full))
    finally:
        destination.stop()
    tidy(run_dir, options, problems)
    return rows


def retrieval_goals(work: Path, options: RetrievalOptions) -> tuple[list[GoalRow], list[str]]:
    """Measure the retrieval goals on every archive size; (rows, problems)."""
    orthanc.ensure_installed()
    problems = Problems()
    files = batch_files(work, options)
    batches = Batches(files, empty_rates(work, options, files, problems))
    rows: list[GoalRow] = []
    for size in options.find_instances:
        started = time.monotonic()
        rows += archive_rows(work, size, options, batches, problems)
        progress(f"archive of {size}: {time.monotonic() - started:.0f} s")
    return rows, problems.found


def print_rows(rows: Sequence[GoalRow]) -> None:
    """A plain Markdown table of the rows, samples included."""
    print("| goal | unit | pacsd | orthanc | ratio | met | samples | note |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for row in rows:
        peer, ratio = row.peers.get("orthanc"), row.ratio("orthanc")
        samples = "; ".join(
            f"{name} " + " ".join(f"{value:.3g}" for value in values)
            for name, values in row.samples.items()
        )
        cells = [
            row.goal,
            row.unit,
            "-" if row.pacsd is None else f"{row.pacsd:.3g}",
            "-" if peer is None else f"{peer:.3g}",
            "-" if ratio is None else f"{ratio:.2f}",
            {True: "yes", False: "no", None: "-"}[row.met()],
            samples,
            row.note,
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the retrieval goals alone; 1 when an answer was wrong."""
    parser = argparse.ArgumentParser(prog="python -m tests.perf.retrieval")
    add = parser.add_argument
    add("--smoke", action="store_true", help="60 instances, everything once")
    add("--work", type=Path, required=True, help="work folder; generated inputs cached there")
    add("--instances", type=int, nargs="+", help="archive sizes (10000 100000)")
    add("--repeat", type=int, help="queries and one-study retrieves per server (20)")
    add("--bulk-repeat", type=int, help="bulk retrieves per server (2)")
    add("--ingest-repeat", type=int, help="ingest batches per server and archive (5)")
    add("--case-insensitive-pn", action="store_true", help="PN matching ignores case in both")
    add("--keep", action="store_true", help="keep the servers' folders")
    args = parser.parse_args(argv)
    options = replace(
        SMOKE if args.smoke else RetrievalOptions(),
        case_insensitive_pn=args.case_insensitive_pn,
        keep=args.keep,
    )
    if args.instances:
        options = replace(options, find_instances=tuple(args.instances))
    if args.repeat:
        options = replace(options, repeat=args.repeat)
    if args.bulk_repeat:
        options = replace(options, bulk_repeat=args.bulk_repeat)
    if args.ingest_repeat:
        options = replace(options, ingest_repeat=args.ingest_repeat)
    started = time.monotonic()
    rows, problems = retrieval_goals(args.work, options)
    print_rows(rows)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
