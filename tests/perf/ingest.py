"""Goals 1 and 2 of issue 16: C-STORE ingest from DCMTK storescu, pacsd beside storescp and Orthanc.

Each run is one of benchmarks.ingest (`run_one`): a fresh server on an empty store, K storescu
processes sending one CT series at once, every instance checked as stored (Success responses
and index rows or files). pacsd runs its default configuration: files fsynced, index committed
before the answer. For each repetition the cases run in turn and, within a case, pacsd, storescp
and Orthanc one after the other, so that a slow minute of the machine hits all three; a run
with a problem (an instance not stored...) is left out of the medians and reported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.ingest import BENCH_SIZE, SMALL_SIZE, Options, prepare_inputs, run_one
from benchmarks.report import Workload
from tests.perf.goals import GoalRow, median

PEERS = ("storescp", "orthanc")
SERVERS = ("pacsd", *PEERS)


@dataclass(frozen=True)
class IngestCase:
    """One instance size and association count, and the goals set for it (peer, ratio)."""

    goal: str
    size: int
    associations: int
    targets: tuple[tuple[str, float], ...]


NEAR_STORESCP = ("storescp", 0.6)
CASES = (
    IngestCase("C-STORE 0.5 MB CT, 1 assoc", BENCH_SIZE, 1, (("orthanc", 1.5), NEAR_STORESCP)),
    IngestCase("C-STORE 0.5 MB CT, 8 assoc", BENCH_SIZE, 8, (("orthanc", 2.0),)),
    IngestCase("C-STORE 64x64 CT, 1 assoc", SMALL_SIZE, 1, (("orthanc", 1.5),)),
    IngestCase("C-STORE 64x64 CT, 8 assoc", SMALL_SIZE, 8, (("orthanc", 1.5),)),
)  # the goals of issue 16, as ratios to a peer's instances/s; storescp is measured in every case


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)


def ingest_goals(
    options: Options, work: Path, counts: dict[int, int], repeat: int
) -> tuple[list[GoalRow], list[str]]:
    """Every case, `repeat` times, servers alternating; `counts` maps size to instances."""
    workloads = {size: prepare_inputs(work, counts[size], size) for size in counts}
    samples = {case: {server: list[float]() for server in SERVERS} for case in CASES}
    problems: list[str] = []
    for repetition in range(1, repeat + 1):
        progress(f"ingest, repetition {repetition} of {repeat}")
        for case in CASES:
            for server in SERVERS:
                result = run_one(options, server, workloads[case.size], case.associations, work)
                if result.problems:
                    where = f"{case.goal}, {server}, run {repetition}"
                    problems.extend(f"{where}: {problem}" for problem in result.problems)
                else:
                    samples[case][server].append(result.per_second)
    rows = [row for case in CASES for row in case_rows(case, samples[case], workloads[case.size])]
    return rows, problems


def case_rows(
    case: IngestCase, samples: dict[str, list[float]], workload: Workload
) -> list[GoalRow]:
    """One row per target of `case`, with the same medians."""
    runs = len(samples["pacsd"])
    note = f"{len(workload.files)} x {workload.size_label} per run, median of {runs} run(s)"
    return [
        GoalRow(
            goal=case.goal,
            unit="inst/s",
            pacsd=median(samples["pacsd"]),
            peers={peer: median(samples[peer]) for peer in PEERS},
            target_peer=peer,
            target_ratio=ratio,
            samples=samples,
            note=note,
        )
        for peer, ratio in case.targets
    ]
