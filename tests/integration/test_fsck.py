"""`pacsd fsck`: finds rows without files, files without rows and damaged files; --repair
removes what cannot be served and keeps every file in a quarantine folder.

The checks run on both storage backends (fixture `storage`: the filesystem, and S3 on a
SeaweedFS for the module, where a file is an object and the quarantine a key prefix); the
files are damaged and read through `StoredFiles`. The configuration errors stay on the
filesystem: they are about a storage root folder and an index file that do not exist.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import create_engine, text

from tests import datagen
from tests.conftest import ArchiveStorage
from tests.harness import PacsdProcess, StoredFiles, audit_records, pacsd_command
from tests.inspect_archive import index_rows
from tests.scu import store_files


def _fsck(server: PacsdProcess, *args: str) -> tuple[int, dict[str, Any]]:
    result = pacsd_command("fsck", "--config", str(server.config_path), "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _stored_archive(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
    series: int,
) -> tuple[PacsdProcess, StoredFiles, list[dict[str, Any]]]:
    """A stopped server whose archive holds `series` series of two CT instances each, its
    stored files and its index rows."""
    server = pacsd_server(database_url, storage=storage.settings)
    sources = []
    for number in range(series):
        folder = tmp_path / f"series{number}"
        sources += list(datagen.ct_series(folder, 2, size=16))
    assert store_files(server.host, server.port, sources) == [(0x0000, "")] * len(sources)
    assert server.stop() == 0
    return server, storage.files(server), index_rows(database_url)


_COUNTS = {table: text(f"SELECT count(*) FROM {table}") for table in ("series", "study")}  # noqa: S608


def _count(database_url: str, table: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(_COUNTS[table]).scalar_one())
    finally:
        engine.dispose()


def test_fsck_reports_a_clean_archive_with_exit_0(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
) -> None:
    """After ordinary stores, every row has its intact file and no file lacks a row."""
    server, _files, rows = _stored_archive(pacsd_server, database_url, storage, tmp_path, 2)
    code, report = _fsck(server)
    assert code == 0, report
    assert report["clean"] is True
    assert report["instances"] == report["files"] == len(rows) == 4
    result = pacsd_command("fsck", "--config", str(server.config_path))
    assert result.returncode == 0
    assert result.stdout.startswith("fsck: clean: 4 instances and 4 files checked")


def test_fsck_finds_each_kind_of_problem_and_repair_quarantines_without_deleting(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
) -> None:
    """Missing, truncated, altered and unindexed files are reported (exit 1); --repair drops
    their rows (and the series left empty), moves files into the quarantine; a rerun is
    clean, a file younger than --min-age not judged."""
    server, files, rows = _stored_archive(pacsd_server, database_url, storage, tmp_path, 3)
    missing, truncated, altered = rows[0], rows[2], rows[3]  # series 1 loses both instances
    files.remove(missing["file_path"])
    files.write(truncated["file_path"], b"DICM")
    content = bytearray(files.read(altered["file_path"]) or b"")
    content[-1] ^= 0xFF
    files.write(altered["file_path"], bytes(content))
    files.write("ab/cdef/orphan.dcm", b"not indexed")
    (server.storage_root / ".tmp" / "leftover.part").write_bytes(b"work folders are not judged")

    # --min-age 0: the orphan is judged however new (an object's time cannot be set back).
    code, report = _fsck(server, "--min-age", "0")
    assert code == 1
    found = {(p["kind"], p["file_path"]) for p in report["problems"]}
    assert found == {
        ("missing-file", missing["file_path"]),
        ("size-mismatch", truncated["file_path"]),
        ("checksum-mismatch", altered["file_path"]),
        ("orphan-file", "ab/cdef/orphan.dcm"),
    }
    assert _count(database_url, "series") == 3, "a check alone changes nothing"

    code, report = _fsck(server, "--min-age", "0", "--repair")
    assert code == 0, report
    assert report["unrepaired"] == 0
    kept = files.quarantined(report["quarantine"])  # a folder, or a key prefix on S3
    assert set(kept) == {truncated["file_path"], altered["file_path"], "ab/cdef/orphan.dcm"}
    assert kept["ab/cdef/orphan.dcm"] == _sha256(b"not indexed")
    run = PurePosixPath(report["quarantine"]).name  # the manifest stays local on S3 too
    manifest_path = server.storage_root / ".quarantine" / run / "manifest.jsonl"
    manifest = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    assert {entry["kind"] for entry in manifest} == {
        "size-mismatch",
        "checksum-mismatch",
        "orphan-file",
    }
    remaining = {row["sop_instance_uid"] for row in index_rows(database_url)}
    assert remaining == {row["sop_instance_uid"] for row in rows[1:2] + rows[4:]}
    assert _count(database_url, "series") == 2, "the series left without instances is gone"
    assert _count(database_url, "study") == 2
    deleted = [
        event
        for event in audit_records(server.config_path.parent / "audit.jsonl")
        if event["EventIdentification"]["EventID"]["csd-code"] == "110105"
    ]
    assert {event["EventIdentification"]["EventActionCode"] for event in deleted} == {"D"}
    studies = [
        o for event in deleted for o in event["ParticipantObjectIdentification"] if "SOPClass" in o
    ]
    expected = {row["study_instance_uid"] for row in (missing, truncated, altered)}
    assert {study["ParticipantObjectID"] for study in studies} == expected
    removed = sum(c["NumberOfInstances"] for study in studies for c in study["SOPClass"])
    assert removed == 3, "one event per study, counting the three rows removed"

    files.write("ab/cdef/young.dcm", b"being written")  # as a C-STORE's, before its row
    code, report = _fsck(server)
    assert code == 0, report
    assert report["young_files_skipped"] == 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fsck_repair_refuses_when_most_files_are_missing(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
) -> None:
    """An empty storage root (an unmounted share? an emptied bucket?) is reported; --repair
    keeps every row."""
    server, files, rows = _stored_archive(pacsd_server, database_url, storage, tmp_path, 6)
    for row in rows:
        files.remove(row["file_path"])
    code, report = _fsck(server, "--repair")
    assert code == 1
    assert "refusing" in report["refusal"]
    assert len(index_rows(database_url)) == len(rows) == 12


def test_fsck_is_clean_beside_a_running_server_that_just_stored(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
) -> None:
    """Run while the server runs, right after stores: exit 0, nothing young judged an orphan."""
    server = pacsd_server(database_url, storage=storage.settings)
    sources = list(datagen.ct_series(tmp_path / "live", 3, size=16))
    assert store_files(server.host, server.port, sources) == [(0x0000, "")] * 3
    code, report = _fsck(server)
    assert code == 0, report
    assert report["instances"] == 3


def test_fsck_configuration_errors_exit_2(tmp_path: Path) -> None:
    """A storage root or SQLite index that does not exist is a configuration error (exit 2).
    Filesystem only: a missing root folder and index file, the same on either backend."""
    config = tmp_path / "pacsd.yaml"
    config.write_text(
        f"storage:\n  root: {tmp_path / 'absent'}\n"
        f"database:\n  url: sqlite:///{tmp_path / 'index.sqlite'}\n",
        encoding="utf-8",
    )
    result = pacsd_command("fsck", "--config", str(config))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr
    (tmp_path / "absent").mkdir()
    result = pacsd_command("fsck", "--config", str(config))
    assert result.returncode == 2
    assert "no index database" in result.stderr
    assert not (tmp_path / "index.sqlite").exists(), "fsck never creates an index"
