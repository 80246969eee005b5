"""Import benchmark: one mixed folder into pacsd three ways, and into Orthanc its own way.

What is measured
    A folder like an administrator's (tests/integration/test_import.make_mixed_folder): N
    uncompressed CT files of `--size`, one instance in each of seven other transfer syntaxes
    (implicit, deflated, big endian, RLE, JPEG-LS, JPEG 2000, JPEG baseline), a copy of one
    file, a text file, a truncated and a header-less DICOM file, and a DICOMDIR with its own
    three images. Each run gets an empty archive and is timed from the client's start to its
    exit (time.perf_counter), server start-up outside:

    - `pacsd import --jobs J` (no server running; the command's own start-up, ~0.5 s of Python
      imports, is inside the time; its summary's "seconds" without it is shown too);
    - `storescu +sd +r -nh -R` (DCMTK, one association; -R proposes each file's own transfer
      syntax, without it the compressed files fail) into a running pacsd;
    - Orthanc's own import: each file POSTed to its REST `/instances`, one request at a time,
      as Orthanc's ImportDicomFiles.py sample does (urllib here; the sample is not packaged by
      Debian), into a running Orthanc (no compression, no plugins).

    files/s and MB/s count every file of the folder, MB = 10^6 bytes of file size read. The
    instances each archive holds afterwards are printed beside: they should all be the same.

All on 127.0.0.1; every process is stopped by its pid. Run from the repository root:
python -m benchmarks.import_rate --help
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import orthanc
from benchmarks.dcmtk import HOST, dcmtk_environment, tool_version
from benchmarks.ingest import count_instances, stop_pacsd
from tests.harness import PacsdProcess, base_config
from tests.integration.test_import import MixedFolder, make_mixed_folder

CLIENT_TIMEOUT_S = 900.0
MB = 1_000_000


@dataclass(frozen=True)
class Run:
    """One client's figures."""

    name: str
    seconds: float
    instances: int
    note: str = ""


def progress(message: str) -> None:
    """Progress goes to stderr; the figures go to stdout."""
    print(f"[import] {message}", file=sys.stderr, flush=True)


def folder_files(folder: MixedFolder) -> list[Path]:
    """Every file under the folder's arguments (the DICOMDIR's folder for the DICOMDIR)."""
    roots = [path.parent if path.is_file() else path for path in folder.arguments]
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def bench_pacsd_import(folder: MixedFolder, work: Path, jobs: int) -> Run:
    """`pacsd import` into an empty archive, no server running."""
    config = base_config(work)
    PacsdProcess.from_config(work, config)
    command = [sys.executable, "-m", "pacsd", "import", "--config", str(work / "pacsd.yaml")]
    command += ["--jobs", str(jobs), "--json", *map(str, folder.arguments)]
    environment = {k: v for k, v in os.environ.items() if k != "PACSD_CONFIG"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment,
                          timeout=CLIENT_TIMEOUT_S, check=False)  # fmt: skip
    seconds = time.perf_counter() - started
    summary = json.loads(done.stdout)
    note = f"exit {done.returncode}; {summary['counts']}; in-process {summary['seconds']:.2f} s"
    return Run(f"pacsd import --jobs {jobs}", seconds, count_instances(config["database"]["url"]),
               note)  # fmt: skip


def bench_storescu(folder: MixedFolder, work: Path, storescu: Path) -> Run:
    """DCMTK's storescu scanning the folder into a running pacsd."""
    config = base_config(work)
    server = PacsdProcess.from_config(work, config)
    try:
        server.start()
        # -R: propose each file's own transfer syntax (by default storescu proposes only the
        # uncompressed ones and cannot send a compressed file); the DICOMDIR's folder, since
        # storescu does not read DICOMDIRs.
        roots = [path.parent if path.is_file() else path for path in folder.arguments]
        command = [str(storescu), "+sd", "+r", "-nh", "-R", "-aet", "IMPORTSCU", "-aec", "PACSD",
                   server.host, str(server.port), *map(str, roots)]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, env=dcmtk_environment(),
                              timeout=CLIENT_TIMEOUT_S, check=False)  # fmt: skip
        seconds = time.perf_counter() - started
    finally:
        stop_pacsd(server)
    instances = count_instances(config["database"]["url"])
    return Run("storescu +sd +r -R -> pacsd", seconds, instances, f"exit {done.returncode}")


def bench_orthanc(folder: MixedFolder, work: Path, binary: Path) -> Run:
    """Each file POSTed to Orthanc's /instances, one at a time (ImportDicomFiles.py's way)."""
    server = orthanc.OrthancServer.start(binary, work, work / "orthanc.log")
    url = f"http://{HOST}:{server.http_port}/instances"
    refused = 0
    try:
        started = time.perf_counter()
        for path in folder_files(folder):
            headers = {"Content-Type": "application/dicom"}
            request = urllib.request.Request(url, path.read_bytes(), headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (http)
                    response.read()
            except urllib.error.HTTPError:
                refused += 1  # Orthanc answers 400 to what it cannot parse
        seconds = time.perf_counter() - started
        instances = server.count_instances()
    finally:
        server.stop()
    return Run("Orthanc REST POST /instances", seconds, instances, f"{refused} files refused")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300, help="uncompressed CT files")
    parser.add_argument("--size", type=int, default=256, help="CT rows and columns")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Make the folder, run each client against an empty archive, print the table."""
    options = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pacsd-import-", dir=options.work))
    try:
        progress(f"writing the mixed folder in {work}")
        folder = make_mixed_folder(work / "input", options.instances, options.size)
        files = folder_files(folder)
        total = sum(path.stat().st_size for path in files)
        storescu = Path(shutil.which("storescu") or "storescu")
        binary = orthanc.ensure_installed()
        jobs: int = options.jobs
        benches: list[tuple[str, Callable[[], Run]]] = [
            ("pacsd import", lambda: bench_pacsd_import(folder, work / "a", jobs)),
            ("storescu", lambda: bench_storescu(folder, work / "b", storescu)),
            ("orthanc", lambda: bench_orthanc(folder, work / "c", binary)),
        ]
        runs = []
        for name, bench in benches:
            progress(f"running {name}")
            runs.append(bench())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"folder: {len(files)} files, {total / MB:.1f} MB, {len(folder.instances)} distinct "
          f"instances; {os.cpu_count()} cores; {tool_version(storescu)}; "
          f"{orthanc.version(binary)}")  # fmt: skip
    print(f"{'client':32} {'seconds':>8} {'files/s':>8} {'MB/s':>7} {'stored':>7}  notes")
    for run in runs:
        print(f"{run.name:32} {run.seconds:8.2f} {len(files) / run.seconds:8.1f} "
              f"{total / MB / run.seconds:7.1f} {run.instances:7d}  {run.note}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
