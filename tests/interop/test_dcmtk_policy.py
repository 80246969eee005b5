"""Acceptance policies as DCMTK's echoscu and storescu meet them: refused AEs see why."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import datagen
from tests.harness import PacsdProcess
from tests.inspect_archive import assert_index_matches_files, stored_files

pytestmark = pytest.mark.usefixtures("dcmtk")
TOOL_TIMEOUT_S = 120
# DCMTK leaves Nagle on unless told; it costs ~40 ms per exchange (docs/dicom-notes.md,
# "Sockets and measurement").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
# Only CT1 may associate. A peer no rule matches gets A-ASSOCIATE-RJ result 1 (permanent),
# source 1 (service user), reason 3 (calling AE title not recognized): PS3.8 Table 9-21.
CT1_ONLY = [
    {"name": "ct", "match": {"calling_ae": "CT1"}, "sop_classes": ["verification", "storage"]}
]
# What DCMTK 3.6.7 prints (stderr) for that A-ASSOCIATE-RJ, line for line.
REJECTION_LINES = [
    "F: Association Rejected:",
    "F: Result: Rejected Permanent, Source: Service User",
    "F: Reason: Calling AE Title Not Recognized",
]


@pytest.fixture
def server(pacsd_server: Callable[..., PacsdProcess], database_url: str) -> PacsdProcess:
    """A pacsd that accepts only CT1.

    The harness's readiness C-ECHO comes from TESTSCU, which this policy rejects; the
    "listening" line is logged once the socket listens, so the tools can connect from then on.
    """
    return pacsd_server(database_url, ready_by_echo=False, policies=CT1_ONLY)


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    """One small generated CT image."""
    return datagen.write_part10(
        datagen.ct_image(datagen.StudyContext(), 1, 32), tmp_path / "ct.dcm"
    )


def run(server: PacsdProcess, tool: str, calling: str, *files: Path) -> tuple[int, list[str]]:
    """Run `tool` as `calling` against the server: exit code and output lines (out + err)."""
    command = [tool, "-aet", calling, "-aec", "PACSD", server.host, str(server.port)]
    result = subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env=DCMTK_ENV,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def test_echoscu_from_an_unknown_ae_is_rejected_with_the_reason(server: PacsdProcess) -> None:
    """echoscu -aet INTRUDER fails and prints "Calling AE Title Not Recognized"."""
    code, lines = run(server, "echoscu", "INTRUDER")
    assert code != 0
    assert lines == REJECTION_LINES


def test_storescu_from_an_unknown_ae_is_rejected_with_the_reason(
    server: PacsdProcess, ct_file: Path
) -> None:
    """storescu -aet INTRUDER fails with the same reason and nothing is stored."""
    code, lines = run(server, "storescu", "INTRUDER", ct_file)
    assert code != 0
    assert lines == REJECTION_LINES
    assert stored_files(server.storage_root) == {}


def test_the_accepted_ae_echoes_and_stores(
    server: PacsdProcess, database_url: str, ct_file: Path
) -> None:
    """The same commands as CT1 succeed: C-ECHO answered, the instance stored and indexed."""
    assert run(server, "echoscu", "CT1") == (0, [])
    assert run(server, "storescu", "CT1", ct_file) == (0, [])
    [row] = assert_index_matches_files(database_url, server.storage_root)
    assert row["calling_ae_title"] == "CT1"
