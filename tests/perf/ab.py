"""Before and after of one change, measured side by side so that the machine's drift cancels out.

The rates of `python -m tests.perf` move by tens of percent within minutes on a shared virtual
machine, more than most single changes gain or lose. Here two copies of the server package
run at once, each a fresh pacsd on its own loopback port with the same configuration, and the
same load goes to one then the other, in alternating order, round after round. Each round
gives both a figure under the same conditions; the median of the per-round ratios (new/base)
is the change's effect, and the server CPU per operation (utime + stime of each pacsd's
process tree, as tests/perf/cpu_cost.py reads it) says what it cost.

- `find`: a small archive (benchmarks/query.py's plan) stored into both, then `--queries`
  STUDY-level PatientName wildcard C-FINDs per round over one association to each (the
  raw-socket requester of the per-query C-FIND goal), every answer checked; median latency.
- `store`: `--count` CT instances of `--size` pixels square per round, sent by
  `--associations` DCMTK storescu processes at once (new instances every round); rate.

    git archive HEAD server | tar -x -C /tmp/base       # the copy to compare with
    python -m tests.perf.ab find --base /tmp/base/server --rounds 16 --queries 400
    python -m tests.perf.ab store --base /tmp/base/server --rounds 10 --count 500 --size 64

`--new DIR` names the other copy (default: this checkout's). Both are byte-compiled first, as
installed wheels are. Rounds matter more than their length: a 5 % effect needs 10 to 16.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

import pacsd
from benchmarks.dcmtk import run_storescu
from benchmarks.ingest import split
from benchmarks.query import plan, write_archive
from tests.datagen import StudyContext, ct_series
from tests.harness import PacsdProcess
from tests.perf.cpu_cost import cpu_per, process_tree, server, tree_cpu
from tests.perf.find_client import FindClient, find_association
from tests.perf.latency import find_queries

STORESCU_TIMEOUT_S = 600.0
WARM_UP_QUERIES = 100
WARM_UP_INSTANCES = 50
NAMES = ("base", "new")


@dataclass
class Figures:
    """One copy's figure and server CPU per operation (ms), round by round."""

    values: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


@contextmanager
def servers(
    work: Path, copies: dict[str, str | None], workers: int
) -> Iterator[dict[str, PacsdProcess]]:
    """A running pacsd per copy (None: this checkout's package), stopped by its own pid."""
    with ExitStack() as stack:
        running: dict[str, PacsdProcess] = {}
        for name, folder in copies.items():
            process = server(work / name, workers, folder).start()
            stack.callback(process.stop)
            running[name] = process
        yield running


class CpuMeter:
    """The CPU time a pacsd's process tree spends from now on."""

    def __init__(self, pacsd_server: PacsdProcess) -> None:
        assert pacsd_server.process is not None
        self.pids = process_tree(pacsd_server.process.pid)
        self.before = tree_cpu(self.pids)

    def ms_per(self, operations: int) -> float:
        """Milliseconds of CPU (user and system) per operation since the meter started."""
        return sum(cpu_per(self.before, tree_cpu(self.pids), operations, 1e3))


def rounds_in_turn(rounds: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Each round's order: base first in even rounds, new first in odd ones."""
    for number in range(rounds):
        yield number, NAMES if number % 2 == 0 else NAMES[::-1]


def find(work: Path, copies: dict[str, str | None], args: argparse.Namespace) -> dict[str, Figures]:
    """Median C-FIND latency (ms) per round and server CPU per query."""
    studies = plan(args.instances)
    files = write_archive(work / "inputs", studies)
    queries = find_queries(studies, args.queries)
    figures = {name: Figures() for name in NAMES}
    with servers(work, copies, args.workers) as running, ExitStack() as stack:
        clients: dict[str, FindClient] = {}
        for name, process in running.items():
            send(process, files, 1, work)
            clients[name] = stack.enter_context(find_association(process.port, "PACSD"))
            query_round(clients[name], queries[:WARM_UP_QUERIES])
        for _number, order in rounds_in_turn(args.rounds):
            for name in order:
                meter = CpuMeter(running[name])
                latencies = query_round(clients[name], queries)
                figures[name].cpu_ms.append(meter.ms_per(len(queries)))
                figures[name].values.append(statistics.median(latencies))
    return figures


def query_round(client: FindClient, queries: Sequence[tuple[Dataset, set[str]]]) -> list[float]:
    """Each query's milliseconds; every answer must be the expected studies."""
    latencies = []
    for identifier, expected in queries:
        answer = client.find(identifier)
        if answer.status != 0 or answer.study_uids != expected:
            raise SystemExit(f"a wrong C-FIND answer: 0x{answer.status:04X}")
        latencies.append(answer.seconds * 1e3)
    return latencies


def store(
    work: Path, copies: dict[str, str | None], args: argparse.Namespace
) -> dict[str, Figures]:
    """C-STOREs per second per round and server CPU per instance."""
    batches = [
        list(ct_series(work / f"inputs-{number}", args.count, args.size, StudyContext()))
        for number in range(args.rounds + 1)
    ]
    figures = {name: Figures() for name in NAMES}
    with servers(work, copies, args.workers) as running:
        for process in running.values():
            send(process, batches[0][:WARM_UP_INSTANCES], args.associations, work)
        for number, order in rounds_in_turn(args.rounds):
            files = batches[number + 1]
            for name in order:
                meter = CpuMeter(running[name])
                seconds = send(running[name], files, args.associations, work)
                figures[name].cpu_ms.append(meter.ms_per(len(files)))
                figures[name].values.append(len(files) / seconds)
    return figures


def send(process: PacsdProcess, files: Sequence[Path], associations: int, work: Path) -> float:
    """Store `files` over `associations` storescu processes at once; the seconds it took."""
    parts = split(files, associations)
    sent = run_storescu(Path("storescu"), "PACSD", process.port, parts, work, STORESCU_TIMEOUT_S)
    if sent.successes != len(files):
        raise SystemExit(f"{sent.successes} of {len(files)} instances stored")
    return sent.seconds


def report(what: str, unit: str, figures: dict[str, Figures], better_when_lower: bool) -> None:
    """Each round's figures, the median ratio new/base, and the CPU per operation."""
    for name in NAMES:
        rounded = ", ".join(f"{value:.3g}" for value in figures[name].values)
        print(f"{name:>4} {unit}: {rounded}")
    pairs = zip(figures["new"].values, figures["base"].values, strict=True)
    ratios = [new / base for new, base in pairs]
    cpu = {name: statistics.median(figures[name].cpu_ms) for name in NAMES}
    sense = "lower is better" if better_when_lower else "higher is better"
    print(
        f"{what}: new/base median of {len(ratios)} rounds {statistics.median(ratios):.3f} "
        f"({sense}); server CPU per operation: base {cpu['base']:.3f} ms, new "
        f"{cpu['new']:.3f} ms"
    )


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("find", "store"))
    parser.add_argument("--base", required=True, help="the server/ folder of the other copy")
    parser.add_argument("--new", default=None, help="the changed copy (default: this one)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--instances", type=int, default=500, help="find: archive size")
    parser.add_argument("--queries", type=int, default=400, help="find: queries per round")
    parser.add_argument("--count", type=int, default=500, help="store: instances per round")
    parser.add_argument("--size", type=int, default=64, help="store: pixels square")
    parser.add_argument("--associations", type=int, default=1, help="store: storescu at once")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    args = argument_parser().parse_args(argv)
    copies = {"base": args.base, "new": args.new}
    for folder in (args.base, args.new or str(Path(pacsd.__file__).parent)):
        compileall.compile_dir(folder, quiet=1)
    with tempfile.TemporaryDirectory(prefix="pacsd-ab-") as folder:
        if args.what == "find":
            report("C-FIND latency", "ms", find(Path(folder), copies, args), True)
        else:
            report("C-STORE rate", "instances/s", store(Path(folder), copies, args), False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
