"""The benchmarks still run: each on a tiny workload, its own correctness checks included.

A benchmark exits 1 when an answer was wrong (an instance not stored, a C-FIND result that is
not the expected set, a retrieve that did not deliver everything), so exit 0 here means its
checks passed on a real pacsd, DCMTK storescu/storescp/getscu and, for the query benchmark,
pynetdicom SCUs. No figure is asserted: speed is for the benchmark's own report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("dcmtk")
REPOSITORY = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
ORTHANC = Path("/usr/sbin/Orthanc")


def run_module(
    module: str, *arguments: str, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`python -m <module>` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_query_benchmark_runs_and_its_answers_are_right(tmp_path: Path) -> None:
    result = run_module(
        "benchmarks.query",
        "--instances",
        "40",
        "--repeat",
        "2",
        "--bulk-studies",
        "3",
        "--work",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| PatientName wildcard | 2 |" in result.stdout
    assert "| C-MOVE, bulk | 1 | 15 |" in result.stdout  # three studies of five instances
    assert "| C-GET (getscu), bulk | 1 | 15 |" in result.stdout


def test_ingest_benchmark_runs_and_stores_everything(tmp_path: Path) -> None:
    if not ORTHANC.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{ORTHANC} is missing: .ci/run installs Debian's orthanc")
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    result = run_module(
        "benchmarks.ingest", "--count", "4", "--associations", "1,2", "--reference", "--orthanc",
        "--work", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "problem" not in result.stdout.lower(), result.stdout
    orthanc_rows = [line for line in result.stdout.splitlines() if line.startswith("orthanc ")]
    assert len(orthanc_rows) == 2  # K=1 and K=2, every instance stored (exit code 0)


SMOKE_TIMEOUT_S = 280
PERF_GOALS = (
    "C-STORE 0.5 MB CT, 1 assoc",
    "C-STORE 0.5 MB CT, 8 assoc",
    "C-STORE 64x64 CT, 1 assoc",
    "C-STORE 64x64 CT, 8 assoc",
    "association rate (open, C-ECHO, release)",
    "start-up to the first C-ECHO answered",
    "idle: 10 open idle associations, CPU % of one core",
    "peak memory (PSS, all processes), 16 associations storing 0.5 MB CT",
    "RSS increase, one 50 MB instance",
    "C-FIND per query, small archive, one association",
)
RETRIEVAL_GOAL_PREFIXES = ("C-FIND", "C-MOVE", "C-GET")


def test_perf_smoke_run_measures_every_goal_and_its_answers_are_right(tmp_path: Path) -> None:
    """`python -m tests.perf --smoke`: exit 0 (every check passed), a table row per goal."""
    if not ORTHANC.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{ORTHANC} is missing: .ci/run installs Debian's orthanc")
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    result = run_module("tests.perf", "--smoke", "--work", str(tmp_path), timeout=SMOKE_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    goals = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line[:2] == "| "]
    for goal in PERF_GOALS:
        assert goal in goals, result.stdout
    for prefix in RETRIEVAL_GOAL_PREFIXES:
        assert any(goal.startswith(prefix) for goal in goals), result.stdout
    assert "PROBLEM" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("what", "sizes", "summary"),
    [
        ("find", ["--instances", "30", "--queries", "10"], "C-FIND latency: new/base median of 2"),
        ("store", ["--count", "12", "--size", "16"], "C-STORE rate: new/base median of 2"),
    ],
)
def test_ab_tool_compares_two_copies_with_checked_answers(
    tmp_path: Path, what: str, sizes: list[str], summary: str
) -> None:
    """`python -m tests.perf.ab`: two copies of the server package (here this checkout's,
    copied) each answer every C-FIND right or store every instance (exit 0), and both get a
    figure per round."""
    base = tmp_path / "base"
    archived = subprocess.run(
        ["git", "archive", "HEAD", "server"], cwd=REPOSITORY, capture_output=True, check=False
    )
    if archived.returncode != 0:
        pytest.skip("not a git checkout: no copy of the server package to compare with")
    base.mkdir()
    subprocess.run(["tar", "-x", "-C", str(base)], input=archived.stdout, check=True)
    arguments = [what, "--base", str(base / "server"), "--rounds", "2", "--workers", "1"]
    result = run_module("tests.perf.ab", *arguments, *sizes)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary in result.stdout, result.stdout
    for name in ("base", "new"):
        rounds = [line for line in result.stdout.splitlines() if line.startswith(f"{name:>4} ")]
        assert len(rounds) == 1, result.stdout
        assert rounds[0].count(",") == 1, result.stdout  # a figure for each of the 2 rounds
