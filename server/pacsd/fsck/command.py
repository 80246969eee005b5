"""Run a check (and a repair) for `pacsd fsck`, print what it found, choose the exit code.

Exit codes follow the other commands: 0 clean (or every problem repaired), 1 problems remain
or the index is unreachable, 2 a configuration error (such as a storage root that does not
exist: checking an unmounted share would report every file missing).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pacsd import audit
from pacsd.fsck.repair import repair
from pacsd.fsck.scan import FsckReport, scan
from pacsd.index.cluster import ArchiveBusy, archive_lock
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.schema import schema_status
from pacsd.settings import Settings
from pacsd.storage.base import StorageUnavailable, open_store

# Files younger than this (seconds, at the start of the check) are not judged: on a running
# server a C-STORE's file is in place a moment before its index row commits.
DEFAULT_MIN_AGE_S = 120.0
PROGRESS_INTERVAL_S = 5.0
EXIT_CLEAN = 0
EXIT_PROBLEMS = 1
EXIT_CONFIG = 2


class FsckUnavailable(Exception):
    """The check could not run; `exit_code` says whether it is a configuration error."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_fsck(settings: Settings, repairing: bool, as_json: bool, min_age: float) -> int:
    """Check (and with `repairing`, repair) the configured archive; returns the exit code."""
    root = settings.storage.root.resolve()
    if not root.is_dir():
        raise FsckUnavailable(f"storage.root {root} is not a directory", EXIT_CONFIG)
    database = _open_index(settings.database.url)
    try:
        # One repair per archive at a time, whichever node runs it (PostgreSQL advisory lock;
        # a no-op on SQLite). A check alone changes nothing and needs no lock.
        with archive_lock(database, "fsck-repair") if repairing else nullcontext():
            files = open_store(settings.storage, min_free_space=0)
            report = scan(database, files, min_age, _Progress())
            if repairing and report.problems:
                audit.configure(settings)  # rows removed are audited (DICOM Study Deleted)
                try:
                    repair(database, files, report)
                finally:
                    audit.shutdown()
    except ArchiveBusy:
        raise FsckUnavailable(
            "another `pacsd fsck --repair` is running on this archive; try again after it",
            EXIT_PROBLEMS,
        ) from None
    except OperationalError as exc:
        raise FsckUnavailable(_unreachable(exc), EXIT_PROBLEMS) from exc
    except StorageUnavailable as exc:
        raise FsckUnavailable(f"storage unreachable: {exc}", EXIT_PROBLEMS) from exc
    finally:
        database.dispose()
    if as_json:
        click.echo(json.dumps(_as_json(report, min_age), indent=2))
    else:
        _print_text(report, min_age)
    clean = not report.unrepaired and report.refusal is None
    return EXIT_CLEAN if clean else EXIT_PROBLEMS


def _open_index(url: str) -> IndexDatabase:
    """The index database, which must exist and be at this pacsd's schema (never created)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise FsckUnavailable(f"no index database at {parsed.database}", EXIT_CONFIG)
    database = IndexDatabase(create_index_engine(url, pool_size=1))
    try:
        status = schema_status(database.engine)
    except OperationalError as exc:
        database.dispose()
        raise FsckUnavailable(_unreachable(exc), EXIT_PROBLEMS) from exc
    if not status.up_to_date:
        database.dispose()
        current = ", ".join(status.current) or "none"
        raise FsckUnavailable(
            f"index schema is at revision {current}, this pacsd needs {', '.join(status.head)}",
            EXIT_PROBLEMS,
        )
    return database


def _unreachable(exc: OperationalError) -> str:
    return f"index database unreachable: {str(exc.orig).splitlines()[0]}"


class _Progress:
    """A line on stderr every few seconds of a long check."""

    def __init__(self) -> None:
        self.next_at = time.monotonic() + PROGRESS_INTERVAL_S

    def __call__(self, report: FsckReport) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + PROGRESS_INTERVAL_S
        click.echo(
            f"fsck: {report.instances} instances checked, {_megabytes(report.bytes_read)} read, "
            f"{len(report.problems)} problems so far",
            err=True,
        )


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB"


def _summary(report: FsckReport, min_age: float) -> str:
    checked = (
        f"{report.instances} instances and {report.files} files checked, "
        f"{_megabytes(report.bytes_read)} read"
    )
    if report.young_files_skipped:
        checked += f" ({report.young_files_skipped} files newer than {min_age:g} s not judged)"
    if not report.problems:
        return f"fsck: clean: {checked}"
    kinds = Counter(problem.kind.value for problem in report.problems)
    found = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    repaired = len(report.problems) - len(report.unrepaired)
    line = f"fsck: {checked}; {len(report.problems)} problems ({found}), {repaired} repaired"
    if report.quarantine is not None:
        line += f"; quarantine: {report.quarantine}"
    return line


def _print_text(report: FsckReport, min_age: float) -> None:
    for problem in report.problems:
        parts = [problem.kind.value, problem.file_path]
        if problem.sop_instance_uid:
            parts.append(f"instance {problem.sop_instance_uid}")
        if problem.detail:
            parts.append(problem.detail)
        if problem.repair:
            parts.append(f"repaired: {problem.repair}")
        click.echo("  ".join(parts))
    if report.refusal is not None:
        click.echo(f"fsck: not repaired: {report.refusal}", err=True)
    click.echo(_summary(report, min_age))


def _as_json(report: FsckReport, min_age: float) -> dict[str, object]:
    return {
        "clean": not report.problems,
        "instances": report.instances,
        "files": report.files,
        "bytes_read": report.bytes_read,
        "young_files_skipped": report.young_files_skipped,
        "min_age_seconds": min_age,
        "problems": [problem.as_json() for problem in report.problems],
        "unrepaired": len(report.unrepaired),
        "quarantine": str(report.quarantine) if report.quarantine is not None else None,
        "refusal": report.refusal,
    }
