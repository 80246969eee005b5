"""Goal 6 of issue 16: pacsd's memory while storing, with Orthanc's beside it for information.

Memory of the 16-association run is the peak, over samples taken every SAMPLE_INTERVAL_S, of
the sum of PSS (/proc/<pid>/smaps_rollup) over the server process and its children: pacsd's
workers are forked from a supervisor and share the pages it filled before the fork, which a
sum of RSS counts once per process (PSS divides each shared page among its sharers, so the
sum is what the tree really holds). The sum of VmHWM (/proc/<pid>/status, each process's own
peak RSS, shared pages counted in each) is reported beside it. Both are polled during the
transfer (a child that exits keeps its last figures) and read once more at the end. Each run
starts a fresh server, so the peak of the 16-association run is the process's peak since
start-up. For the large instance the peak is reset just
before the transfer (writing 5 to /proc/<pid>/clear_refs, Linux 4.0+; when refused, the fresh
process's peak since start-up stands, an upper bound) and the figure is that peak minus the RSS
before.

The large instance is a Multi-frame Grayscale Word Secondary Capture of 512x512 frames: a
header written by pydicom, then the Pixel Data element header and the pixel bytes written in
1 MiB chunks (never held in memory), cached in the work folder.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
from pathlib import Path
from types import TracebackType

from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from benchmarks.ingest import BENCH_SIZE, BENCHES, Options, prepare_inputs
from benchmarks.report import RunResult, Workload
from tests.datagen import StudyContext, ct_image, write_part10
from tests.perf.goals import GoalRow, median

SAMPLE_INTERVAL_S = 0.02
KB = 1024  # /proc reports kB of 1024 bytes
FRAME_BYTES = BENCH_SIZE * BENCH_SIZE * 2
CHUNK = 1 << 20
SERVERS = ("pacsd", "orthanc")
CONCURRENT_ASSOCIATIONS = 16
PEAK_LIMIT_MB = 200.0
INCREASE_LIMIT_MB = 100.0


def progress(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[perf] {message}", file=sys.stderr, flush=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
            except OSError:
                continue
            pending.extend(int(child) for child in children.split())
    return tree


def status_kb(pid: int, key: str) -> int | None:
    """A kB figure of /proc/<pid>/status (VmHWM, VmRSS), None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None


class PeakSampler:
    """The peak RSS of a process tree while the `with` block runs (MB = 10^6 bytes)."""

    def __init__(self, pid: int, reset: bool) -> None:
        self.pid = pid
        self.reset = reset
        self.was_reset = False
        self.rss_before_kb = 0
        self.peaks_kb: dict[int, int] = {}
        self.pss_kb: dict[int, int] = {}  # the last PSS of each process seen
        self.peak_pss_kb = 0  # the largest sum of PSS over the tree at one sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakSampler:
        tree = process_tree(self.pid)
        if self.reset:
            self.was_reset = all(reset_peak(pid) for pid in tree)
        self.rss_before_kb = sum(status_kb(pid, "VmRSS") or 0 for pid in tree)
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _poll(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def sample(self) -> None:
        """Record VmHWM and PSS of every process of the tree now."""
        for pid in process_tree(self.pid):
            peak = status_kb(pid, "VmHWM")
            if peak is not None:
                self.peaks_kb[pid] = max(peak, self.peaks_kb.get(pid, 0))
            pss = pss_kb(pid)
            if pss is not None:
                self.pss_kb[pid] = pss
        self.peak_pss_kb = max(self.peak_pss_kb, sum(self.pss_kb.values()))

    @property
    def peak_mb(self) -> float:
        """Sum of the peaks of every process seen."""
        return sum(self.peaks_kb.values()) * KB / 1e6

    @property
    def peak_pss_mb(self) -> float:
        """The largest sum of PSS over the tree seen at one sample."""
        return self.peak_pss_kb * KB / 1e6

    @property
    def increase_mb(self) -> float:
        """Peak during the block minus the RSS before it."""
        return self.peak_mb - self.rss_before_kb * KB / 1e6


def pss_kb(pid: int) -> int | None:
    """Proportional set size of a process in kB (smaps_rollup, Linux 4.14+), None if gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (proc(5), clear_refs "5"); False when refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def large_instance(work: Path, megabytes: int) -> Workload:
    """A cached multi-frame instance with `megabytes` MiB of 16-bit pixel data, streamed."""
    frames = max(1, megabytes * CHUNK // FRAME_BYTES)
    path = work / "inputs" / f"large-{frames}-frames.dcm"
    if not path.exists():
        progress(f"writing a {frames}-frame instance ({frames * FRAME_BYTES / 1e6:,.0f} MB)")
        partial = path.with_suffix(".partial")
        write_large_instance(partial, frames)
        partial.rename(path)
    return Workload(BENCH_SIZE, (path,), path.stat().st_size)


def write_large_instance(path: Path, frames: int) -> None:
    """Header by pydicom, then Pixel Data (7FE0,0010) OW written chunk by chunk."""
    dataset = ct_image(StudyContext(), 1, size=BENCH_SIZE)
    del dataset.PixelData
    dataset.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    dataset.Modality = "OT"
    dataset.ConversionType = "WSD"
    dataset.NumberOfFrames = frames
    write_part10(dataset, path)  # Explicit VR Little Endian
    remaining = frames * FRAME_BYTES
    payload = os.urandom(CHUNK)
    with path.open("ab") as output:
        # PS3.5 7.1.2: tag, VR "OW", two reserved bytes, 32-bit length
        output.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, remaining))
        while remaining:
            written = output.write(payload[: min(CHUNK, remaining)])
            remaining -= written


def measure(
    options: Options, server: str, workload: Workload, associations: int, work: Path, reset: bool
) -> tuple[PeakSampler | None, RunResult]:
    """One run of `server` watched by a PeakSampler; the sampler and the run's result."""
    run_dir = work / "runs" / f"{server}-memory-k{associations}-{len(workload.files)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    samplers: list[PeakSampler] = []

    def watch(pid: int) -> PeakSampler:
        samplers.append(PeakSampler(pid, reset))
        return samplers[-1]

    result = BENCHES[server](options, workload, associations, run_dir, watch=watch)
    if not options.keep and not result.problems:  # a failed run's logs are saved at the end
        shutil.rmtree(run_dir, ignore_errors=True)
    return (samplers[0] if samplers else None), result


def memory_goals(
    options: Options, work: Path, count: int, large_mb: int, repeat: int
) -> tuple[list[GoalRow], list[str]]:
    """16 associations of 0.5 MB CT and one large instance, pacsd then Orthanc, `repeat` times."""
    many = prepare_inputs(work, count, BENCH_SIZE)
    large = large_instance(work, large_mb)
    peaks: dict[str, list[float]] = {server: [] for server in SERVERS}
    hwm_sums: dict[str, list[float]] = {server: [] for server in SERVERS}
    increases: dict[str, list[float]] = {server: [] for server in SERVERS}
    problems: list[str] = []
    not_reset: set[str] = set()  # servers whose peak since start-up had to stand
    cases = ((many, CONCURRENT_ASSOCIATIONS, peaks), (large, 1, increases))
    for repetition in range(1, repeat + 1):
        for server in SERVERS:
            for workload, associations, figures in cases:
                is_large = workload is large
                sampler, result = measure(
                    options, server, workload, associations, work, reset=is_large
                )
                where = f"memory, {server}, {associations} association(s), run {repetition}"
                problems.extend(f"{where}: {problem}" for problem in result.problems)
                if sampler is None or result.problems:
                    continue
                if is_large and not sampler.was_reset:
                    not_reset.add(server)
                figure = sampler.increase_mb if is_large else sampler.peak_pss_mb
                figures[server].append(figure)
                if not is_large:
                    hwm_sums[server].append(sampler.peak_mb)
                progress(
                    f"{where}: {figure:,.1f} MB (sum of VmHWM {sampler.peak_mb:,.1f} MB, "
                    f"peak PSS {sampler.peak_pss_mb:,.1f} MB), {result.client.seconds:.1f} s"
                )
    rows = [peak_row(many, peaks, hwm_sums), increase_row(large, large_mb, increases, not_reset)]
    return rows, problems


def peak_row(
    workload: Workload, peaks: dict[str, list[float]], hwm_sums: dict[str, list[float]]
) -> GoalRow:
    """Peak memory (PSS of all processes) with 16 storing associations, against the limit."""
    hwm = ", ".join(
        f"{server} {median(values):,.0f} MB" for server, values in hwm_sums.items() if values
    )
    return GoalRow(
        goal=f"peak memory (PSS, all processes), {CONCURRENT_ASSOCIATIONS} associations storing "
        "0.5 MB CT",
        unit="MB",
        pacsd=median(peaks["pacsd"]),
        peers={"orthanc": median(peaks["orthanc"])},
        higher_is_better=False,
        limit=PEAK_LIMIT_MB,
        samples=peaks,
        note=f"{len(workload.files)} x {workload.size_label}; peak of the sampled sum of PSS "
        f"over the process tree (sum of each process's VmHWM, shared pages counted in each: "
        f"{hwm})",
    )


def increase_row(
    workload: Workload, large_mb: int, increases: dict[str, list[float]], not_reset: set[str]
) -> GoalRow:
    """RSS increase while storing one large instance, against the absolute limit."""
    size = "1 GB" if large_mb == 1024 else f"{large_mb} MB"
    note = f"{workload.total_bytes / 1e6:,.0f} MB multi-frame file, peak during minus RSS before"
    if large_mb != 1024:
        note += f" (the goal is for 1 GB: this run used {large_mb} MiB of pixel data)"
    if not_reset:
        note += f"; {', '.join(sorted(not_reset))}: peak since start-up (clear_refs refused)"
    return GoalRow(
        goal=f"RSS increase, one {size} instance",
        unit="MB",
        pacsd=median(increases["pacsd"]),
        peers={"orthanc": median(increases["orthanc"])},
        higher_is_better=False,
        limit=INCREASE_LIMIT_MB,
        samples=increases,
        note=note,
    )
