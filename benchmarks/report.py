"""Results of the ingest benchmark: what each run measured, checks on it, and the printed table."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.dcmtk import CALLING_AE_PREFIX, ClientRun
from tests.harness import PacsdProcess

PERCENTILES = (50, 95, 99)
LOG_PROBLEM_LEVELS = frozenset({"warning", "error", "critical", "exception"})
SHOWN_PROBLEM_LINES = 3
COLUMNS = ("server", "instance", "assoc", "sent", "ok", "stored", "seconds", "inst/s", "MB/s")
PACSD_COLUMNS = ("p50 ms", "p95 ms", "p99 ms", "vs storescp", "vs orthanc")


@dataclass(frozen=True)
class Workload:
    """The files one run sends."""

    size: int
    files: tuple[Path, ...]
    total_bytes: int

    @property
    def size_label(self) -> str:
        """Pixels and mean file size, e.g. "512x512 0.53 MB"."""
        mean = self.total_bytes / max(1, len(self.files))
        shown = f"{mean / 1e6:.2f} MB" if mean >= 1e5 else f"{mean / 1e3:.1f} kB"
        return f"{self.size}x{self.size} {shown}"


@dataclass
class RunResult:
    """One server, one workload, K associations: the measurement and what went wrong."""

    server: str
    workload: Workload
    associations: int
    client: ClientRun
    stored: int  # index rows (pacsd) or files written (reference)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.problems.extend(count_problems(self))

    @property
    def expected(self) -> int:
        """Instances sent."""
        return len(self.workload.files)

    @property
    def per_second(self) -> float:
        """Instances answered with Success per second of wall time."""
        return self.client.successes / self.client.seconds

    @property
    def megabytes_per_second(self) -> float:
        """10^6 bytes of file size answered with Success per second of wall time."""
        sent_bytes = self.workload.total_bytes * self.client.successes / max(1, self.expected)
        return sent_bytes / 1e6 / self.client.seconds


def count_problems(result: RunResult) -> list[str]:
    """Client failures and instances that did not arrive."""
    problems: list[str] = []
    if result.client.timed_out:
        problems.append("a storescu run was killed after the timeout")
    failed_codes = [code for code in result.client.exit_codes if code not in (0, None)]
    if failed_codes:
        problems.append(
            f"storescu exit codes {failed_codes} (logs: {result.client.logs[0].parent})"
        )
    if result.client.successes != result.expected:
        problems.append(f"{result.client.successes} Success responses of {result.expected}")
    if result.stored != result.expected:
        what = "index rows" if result.server == "pacsd" else "files written"
        problems.append(f"{result.stored} {what}, expected {result.expected}")
    return problems


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share / 100 * len(ordered))) - 1]


def pacsd_details(result: RunResult, server: PacsdProcess, exit_code: int | None) -> RunResult:
    """Add the handler latencies, log problems and per-association figures of a pacsd run."""
    stores = [line for line in server.events("dimse") if line.get("operation") == "C-STORE"]
    result.latencies_ms = [float(line["duration_ms"]) for line in stores]
    statuses = Counter(str(line.get("status")) for line in stores)
    failures = {status: n for status, n in statuses.items() if status != "0x0000"}
    if failures:
        result.problems.append(f"C-STORE statuses other than success: {failures}")
    if exit_code != 0:
        result.problems.append(f"pacsd exit code {exit_code}")
    result.problems.extend(log_problems(server))
    result.details.extend(association_details(result, server))
    return result


def log_problems(server: PacsdProcess) -> list[str]:
    """Warning and error lines, and lines that are not JSON (tracebacks, stray prints)."""
    problems: list[str] = []
    flagged = [line for line in server.lines if line.get("level") in LOG_PROBLEM_LEVELS]
    if flagged:
        events = Counter(f"{line.get('level')}: {line.get('event')}" for line in flagged)
        shown = "; ".join(f"{event} (x{n})" for event, n in events.most_common(SHOWN_PROBLEM_LINES))
        problems.append(f"{len(flagged)} warning/error lines in the pacsd log: {shown}")
        tracebacks = [str(line["exception"]) for line in flagged if line.get("exception")]
        if tracebacks:
            last = tracebacks[0].strip().splitlines()[-1]
            problems.append(f"first traceback in the pacsd log ends: {last[:200]}")
    raw = [text for text in server.raw_lines if not text.lstrip().startswith("{")]
    if raw:
        problems.append(f"{len(raw)} non-JSON lines in the pacsd log, first: {raw[0][:160]!r}")
    return problems


def association_details(result: RunResult, server: PacsdProcess) -> list[str]:
    """Per-association lifetimes from pacsd's "association closed" lines, and handler share."""
    closed = [
        line
        for line in server.events("association closed")
        if str(line.get("calling_ae_title", "")).startswith(CALLING_AE_PREFIX)
    ]
    if not closed:
        return []
    lifetimes = [float(line.get("duration_s", 0.0)) for line in closed]
    stored = [int(line.get("instances_stored", 0)) for line in closed]
    share = sum(result.latencies_ms) / 1000 / max(sum(lifetimes), 1e-9)
    wall_ms = result.client.seconds * result.associations / max(1, result.client.successes) * 1000
    return [
        f"associations: {len(closed)} closed, lifetime {_span(lifetimes, 's')}, "
        f"instances stored each {_span(stored, '')}",
        f"per instance on one association: {wall_ms:.1f} ms of wall time, handler p50 "
        f"{_p(result.latencies_ms, 50)} ms; handler share of association time {share:.0%}",
    ]


def _span(values: Sequence[float], unit: str) -> str:
    low, high = min(values), max(values)
    return f"{low:g}{unit}" if low == high else f"{low:g}..{high:g}{unit}"


def _p(values: Sequence[float], share: float) -> str:
    return f"{percentile(values, share):.1f}" if values else "-"


def _reference_rate(
    result: RunResult, results: Sequence[RunResult], reference: str
) -> float | None:
    for other in results:
        same = (other.workload.size, other.associations) == (
            result.workload.size,
            result.associations,
        )
        if other.server == reference and same and not other.problems:
            return other.per_second
    return None


def _ratio(result: RunResult, results: Sequence[RunResult], reference: str) -> str:
    if result.server != "pacsd" or result.problems:
        return "-"
    rate = _reference_rate(result, results, reference)
    return f"{result.per_second / rate:.2f}" if rate else "-"


def table_row(result: RunResult, results: Sequence[RunResult]) -> tuple[str, ...]:
    """The printed cells of one run."""
    return (
        f"{result.server} *" if result.problems else result.server,
        result.workload.size_label,
        str(result.associations),
        str(result.expected),
        str(result.client.successes),
        str(result.stored),
        f"{result.client.seconds:.2f}",
        f"{result.per_second:.1f}",
        f"{result.megabytes_per_second:.1f}",
        *(_p(result.latencies_ms, share) for share in PERCENTILES),
        _ratio(result, results, "storescp"),
        _ratio(result, results, "orthanc"),
    )


def print_report(results: Sequence[RunResult]) -> None:
    """The table, then details and problems per run."""
    header = (*COLUMNS, *PACSD_COLUMNS)
    rows = [header, *(table_row(result, results) for result in results)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in pairs]
        print("  ".join(cells).rstrip())
    print("\nsent/ok/stored: instances sent, Success responses, index rows (pacsd) or files")
    print("written (storescp). p50-p99: pacsd's C-STORE handler time (server side).")
    print("vs storescp / vs orthanc: pacsd instances/s divided by that server's for the same")
    print("size and K (storescp: files only, no index, no fsync; Orthanc: files and SQLite index).")
    if any(result.problems for result in results):
        print("*: incomplete run (see PROBLEM below): rates count Success responses only.")
    for result in results:
        notes = [*result.details, *(f"PROBLEM: {problem}" for problem in result.problems)]
        if notes:
            print(f"\n{result.server}, {result.workload.size_label}, K={result.associations}:")
            for note in notes:
                print(f"  {note}")
