"""Interoperability with DCMTK's command-line tools as clients (echoscu, storescu)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests import datagen
from tests.harness import PacsdProcess
from tests.inspect_archive import assert_index_matches_files, dataset_bytes, work_files

pytestmark = pytest.mark.usefixtures("dcmtk")
TOOL_TIMEOUT_S = 300
# DCMTK leaves Nagle on unless told; it costs ~40 ms per exchange (docs/dicom-notes.md,
# "Sockets and measurement").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk_command(server: PacsdProcess, tool: str, *args: str) -> list[str]:
    """A DCMTK command line aimed at the server."""
    return [tool, "-aet", "DCMTKSCU", "-aec", "PACSD", *args, server.host, str(server.port)]


def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion, bounded in time."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=DCMTK_ENV, check=False
    )


def storescu(server: PacsdProcess, files: Sequence[Path], *options: str) -> list[str]:
    """storescu with every file on the command line (one association)."""
    return [*dcmtk_command(server, "storescu", *options), *map(str, files)]


def sop_instance_uids(files: Sequence[Path]) -> set[str]:
    """The SOP Instance UIDs of some files."""
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}


def test_echoscu(server: PacsdProcess) -> None:
    """echoscu gets a successful C-ECHO."""
    result = run(dcmtk_command(server, "echoscu", "-v"))
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_storescu_folder_over_one_association(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """210 files through one storescu association: every file arrives, indexed once."""
    files = list(datagen.ct_series(tmp_path / "in", 210, size=64))
    result = run(storescu(server, [tmp_path / "in"], "+sd"))
    assert result.returncode == 0, result.stderr
    rows = assert_index_matches_files(database_url, server.storage_root)
    assert sorted(row["sop_instance_uid"] for row in rows) == sorted(sop_instance_uids(files))
    assert {row["calling_ae_title"] for row in rows} == {"DCMTKSCU"}
    server.stop()
    accepted = server.accepted_associations(0)
    assert [line["calling_ae_title"] for line in accepted].count("DCMTKSCU") == 1


def test_four_storescu_processes_at_once(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """Four concurrent storescu associations (one series each): all 240 instances, once each."""
    study = datagen.StudyContext()
    batches = []
    for number in range(4):
        study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
        batches.append(list(datagen.ct_series(tmp_path / f"in{number}", 60, 64, study)))
    processes = [
        subprocess.Popen(storescu(server, batch), env=DCMTK_ENV, stderr=subprocess.PIPE, text=True)
        for batch in batches
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=TOOL_TIMEOUT_S)
        assert process.returncode == 0, stderr
    rows = assert_index_matches_files(database_url, server.storage_root)
    expected = sop_instance_uids([path for batch in batches for path in batch])
    assert len(rows) == len(expected) == 240
    assert {row["sop_instance_uid"] for row in rows} == expected
    assert len({row["series_instance_uid"] for row in rows}) == 4
    assert len({row["study_instance_uid"] for row in rows}) == 1


def test_concurrent_duplicates_are_indexed_once(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """Two storescu sending the same 40 files at once: keep-first stores each instance once."""
    files = list(datagen.ct_series(tmp_path / "in", 40, size=64))
    processes = [
        subprocess.Popen(storescu(server, files), env=DCMTK_ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=TOOL_TIMEOUT_S)
        assert process.returncode == 0, stderr
    rows = assert_index_matches_files(database_url, server.storage_root)
    assert sorted(row["sop_instance_uid"] for row in rows) == sorted(sop_instance_uids(files))
    assert [p for p in work_files(server.storage_root) if p.suffix == ".part"] == []


@pytest.mark.parametrize(("syntax", "option"), [(RLELossless, "-xr"), (JPEG2000Lossless, "-xv")])
def test_storescu_compressed_syntax_is_stored_as_sent(
    server: PacsdProcess, database_url: str, tmp_path: Path, syntax: str, option: str
) -> None:
    """storescu proposing a compressed syntax: pacsd accepts it and stores the bytes as sent."""
    source = datagen.write_part10(
        datagen.ct_image(datagen.StudyContext(), 1, 64), tmp_path / "c.dcm", syntax
    )
    result = run(storescu(server, [source], option))
    assert result.returncode == 0, result.stderr
    [row] = assert_index_matches_files(database_url, server.storage_root)
    assert row["transfer_syntax_uid"] == syntax
    assert dataset_bytes(server.storage_root / str(row["file_path"])) == dataset_bytes(source)
