"""Compare the index with the storage root: rows without files, files without rows, damage.

The index is read in pages of `PAGE_SIZE` rows by primary key, each page its own short read
transaction, so a check of a large archive never holds a snapshot (on SQLite, never stops the
WAL checkpoint) while it hashes files. Files are hashed in 1 MiB chunks. Memory grows only
with the set of indexed file paths (about 100 bytes per instance), which the walk of the
storage root needs to recognise files that no row points to.

Safe beside a running server: a finding on a row is confirmed by reading the row again (a
replaced instance points to a new file by then), and files written less than `min_age`
seconds before the check began are left out, since a C-STORE renames its file into place a
moment before its row commits.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance
from pacsd.storage.base import InstanceStore, StorageUnavailable
from pacsd.storage.filesystem import NOT_INSTANCES, QUARANTINE_DIR

PAGE_SIZE = 500
READ_CHUNK = 1 << 20
__all__ = ["NOT_INSTANCES", "QUARANTINE_DIR", "FsckReport", "Problem", "ProblemKind", "scan"]


class ProblemKind(enum.StrEnum):
    """What is wrong between one index row and one file."""

    MISSING_FILE = "missing-file"
    ORPHAN_FILE = "orphan-file"
    SIZE_MISMATCH = "size-mismatch"
    CHECKSUM_MISMATCH = "checksum-mismatch"


@dataclass
class Problem:
    """One finding; `instance_pk` is None for a file no row points to."""

    kind: ProblemKind
    file_path: str
    instance_pk: int | None = None
    sop_instance_uid: str | None = None
    detail: str = ""
    repair: str | None = None  # what --repair did, once it did it

    def as_json(self) -> dict[str, Any]:
        """The finding as plain data (for --json)."""
        return {
            "kind": self.kind.value,
            "file_path": self.file_path,
            "sop_instance_uid": self.sop_instance_uid,
            "detail": self.detail,
            "repair": self.repair,
        }


@dataclass
class FsckReport:
    """What one check found, and what repairing did."""

    instances: int = 0
    files: int = 0
    bytes_read: int = 0
    young_files_skipped: int = 0
    problems: list[Problem] = field(default_factory=list)
    quarantine: Path | str | None = None  # a folder, or an object store's key prefix
    refusal: str | None = None  # why --repair did not touch the index, if it did not

    @property
    def unrepaired(self) -> list[Problem]:
        """The problems still there."""
        return [problem for problem in self.problems if problem.repair is None]


@dataclass(frozen=True)
class _Row:
    pk: int
    sop_instance_uid: str
    file_path: str
    file_size: int
    file_sha256: str


Progress = Callable[[FsckReport], None]


def scan(
    database: IndexDatabase,
    files: InstanceStore,
    min_age: float,
    progress: Progress | None = None,
) -> FsckReport:
    """Check every index row against its file, then look for files without a row (the
    files under the root, or the objects under the bucket's prefix)."""
    started = time.time()
    report = FsckReport()
    indexed: set[str] = set()
    for row in _rows(database):
        report.instances += 1
        indexed.add(row.file_path)
        problem = _check_row(files, row, report)
        if problem is not None and _still_indexed(database, row):
            report.problems.append(problem)
        if progress is not None:
            progress(report)
    for stored in files.stored_objects():
        relative, modified = stored.relative_path, stored.modified
        report.files += 1
        if relative in indexed:
            continue
        if modified > started - min_age:
            report.young_files_skipped += 1
            continue
        report.problems.append(Problem(ProblemKind.ORPHAN_FILE, relative))
    return report


def _rows(database: IndexDatabase) -> Iterator[_Row]:
    """Every instance row, a page per read transaction, by primary key."""
    columns = (
        Instance.pk,
        Instance.sop_instance_uid,
        Instance.file_path,
        Instance.file_size,
        Instance.file_sha256,
    )
    last = 0
    while True:
        with database.reading() as session:
            page = session.execute(
                select(*columns).where(Instance.pk > last).order_by(Instance.pk).limit(PAGE_SIZE)
            ).all()
        if not page:
            return
        for pk, uid, path, size, sha256 in page:
            yield _Row(int(pk), str(uid), str(path), int(size), str(sha256))
        last = int(page[-1][0])


def _still_indexed(database: IndexDatabase, row: _Row) -> bool:
    """True when the row still points to the same file (not replaced while we looked)."""
    with database.reading() as session:
        current = session.scalar(select(Instance.file_path).where(Instance.pk == row.pk))
    return current == row.file_path


def _check_row(files: InstanceStore, row: _Row, report: FsckReport) -> Problem | None:
    """The problem with this row's file, if any (size first, then the SHA-256 of its bytes)."""

    def problem(kind: ProblemKind, detail: str) -> Problem:
        return Problem(kind, row.file_path, row.pk, row.sop_instance_uid, detail)

    try:
        size = files.size(row.file_path)
    except ValueError:
        return problem(ProblemKind.MISSING_FILE, "path outside the storage root")
    except StorageUnavailable:
        raise  # the check stops: an unreachable store would look like every file missing
    except OSError as exc:
        return problem(ProblemKind.MISSING_FILE, exc.strerror or repr(exc))
    if size != row.file_size:
        return problem(ProblemKind.SIZE_MISMATCH, f"{size} bytes, index says {row.file_size}")
    try:
        digest = _sha256(files, row.file_path)
    except StorageUnavailable:
        raise
    except OSError as exc:
        return problem(ProblemKind.CHECKSUM_MISMATCH, f"unreadable: {exc.strerror or exc!r}")
    report.bytes_read += size
    if digest != row.file_sha256:
        return problem(ProblemKind.CHECKSUM_MISMATCH, f"sha256 {digest[:16]}..., index differs")
    return None


def _sha256(files: InstanceStore, relative_path: str) -> str:
    """The SHA-256 of a file, read in chunks (bounded memory whatever the file's size)."""
    hasher = hashlib.sha256()
    with files.open(relative_path) as stream:
        while chunk := stream.read(READ_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
