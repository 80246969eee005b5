"""`pacsd import`: Part 10 files from folders, DICOMDIRs and single files into the archive.

Every file takes the C-STORE path (`Archive.store`: the same integrity checks, limits and
duplicate policy; the data set is copied byte for byte behind pacsd's file meta), with the
file meta's Media Storage SOP Class and Instance UIDs in the role of the request's (PS3.10 7.1).
Several files are stored at once by a bounded thread pool; the index writer's group commit and
the SQLite writer lock (index/database.py) make that safe beside a running server.

Resumable: a journal (`<storage root>/.tmp/import/<hash of the paths>.jsonl`, in the work
folder, which `pacsd fsck` does not take for instances and a server start empties only at its
top level) gets one line per file that needs no second look (stored, duplicate, replaced,
skipped), written once the file is durable in the archive; a later run of the same paths skips
the files whose size and modification time are unchanged. A run killed between a store and its
journal line only costs a duplicate. A dry run parses and checks each file and looks its SOP
Instance UID up in the index, and writes nothing at all. No click here: cli.py adapts this to
the command line.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import click
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from pacsd.archive import Archive, IncomingInstance, StoreOutcome
from pacsd.audit import transfers
from pacsd.dicom.instance import parse_part10
from pacsd.dicom.part10 import read_file_meta
from pacsd.errors import (
    CannotUnderstand,
    DatasetMismatch,
    DicomStatusError,
    DuplicateRejected,
    OutOfResources,
    ProcessingFailure,
)
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.settings import Settings
from pacsd.settings_security import LimitsSettings
from pacsd.storage.base import open_store
from pacsd.storage.filesystem import TMP_DIR

# The Source AE Title (0002,0016) of imported files and the index's calling AE title.
IMPORT_AE_TITLE = "PACSD-IMPORT"
JOURNAL_FOLDER = "import"  # below the storage root's work folder, FilesystemStore.tmp_dir
# PS3.4 Annex F: the DICOMDIR's SOP class; a directory of the media, never an instance to store.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NOT_DICOM = "not a DICOM file"
_NO_HEADER = (
    "a DICOM data set without the Part 10 header (preamble, DICM, file meta): convert it "
    "first (e.g. dcmconv)"
)
_IN_FLIGHT_PER_JOB = 2  # files submitted ahead of the pool, per thread


class Outcome(enum.StrEnum):
    """What the import did with one file."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"
    REFUSED = "refused"
    SKIPPED = "skipped"


_JOURNALED = {Outcome.STORED, Outcome.DUPLICATE, Outcome.REPLACED, Outcome.SKIPPED}
_BY_STORE_OUTCOME = {
    StoreOutcome.STORED: Outcome.STORED,
    StoreOutcome.DUPLICATE_KEPT_FIRST: Outcome.DUPLICATE,
    StoreOutcome.REPLACED: Outcome.REPLACED,
}


class ImportBusy(Exception):
    """Another `pacsd import` of the same paths holds the journal."""


@dataclass(frozen=True)
class Candidate:
    """A file found by the walk, as the journal knows it."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileResult:
    """One file's outcome; `reason` says why it was refused or skipped."""

    candidate: Candidate
    outcome: Outcome
    reason: str = ""
    status: int = 0
    subject: tuple[str, str] = ("", "")  # (Study Instance UID, Patient ID)
    sop_class_uid: str = ""


class Progress(Protocol):
    """Where the import reports how far it got (a progress bar, plain lines)."""

    def start(self, files: int, total_bytes: int) -> None:
        """Before the first file: how many files and bytes are to be imported."""

    def advance(self, result: FileResult) -> None:
        """After each file."""


@dataclass
class ImportReport:
    """The summary of one run."""

    paths: list[str]
    dry_run: bool
    journal: str | None
    files: int = 0
    bytes: int = 0
    already_done: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, result: FileResult) -> None:
        """Count one file's outcome."""
        self.files += 1
        self.bytes += result.candidate.size
        self.counts[result.outcome.value] += 1
        entry = (str(result.candidate.path), result.reason)
        if result.outcome is Outcome.REFUSED:
            self.refused.append(entry)
        elif result.outcome is Outcome.SKIPPED:
            self.skipped.append(entry)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return {
            "paths": self.paths,
            "dry_run": self.dry_run,
            "journal": self.journal,
            "interrupted": self.interrupted,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "already_done": self.already_done,
            "counts": {outcome.value: self.counts[outcome.value] for outcome in Outcome},
            "refused": [{"path": path, "reason": reason} for path, reason in self.refused],
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }


# -- finding the files ------------------------------------------------------------------------


def find_files(paths: Sequence[Path], exclude: Path) -> tuple[list[Candidate], list[FileResult]]:
    """The files under `paths` (recursive, sorted; each once) plus the files that DICOMDIRs
    among them reference; and the results already known (references to missing files).
    Nothing below `exclude` (the storage root) is taken."""
    seen: set[Path] = set()
    found: list[Candidate] = []
    missing: list[FileResult] = []
    for path in _walk(paths, exclude.resolve()):
        candidate = _candidate(path)
        resolved = path.resolve()
        if candidate is None or resolved in seen:
            continue
        seen.add(resolved)
        found.append(candidate)
        if path.name.upper() != "DICOMDIR":
            continue
        for referenced in dicomdir_references(path):
            if referenced.resolve() in seen:
                continue
            seen.add(referenced.resolve())
            known = _candidate(referenced)
            if known is None:
                gone = Candidate(referenced, 0, 0)
                missing.append(FileResult(gone, Outcome.REFUSED, f"listed in {path} but missing"))
            else:
                found.append(known)
    return found, missing


def _walk(paths: Iterable[Path], exclude: Path) -> Iterator[Path]:
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for folder, folders, files in os.walk(path):  # symbolic links to folders: not followed
            here = Path(folder)
            folders[:] = sorted(f for f in folders if (here / f).resolve() != exclude)
            yield from (here / name for name in sorted(files))


def _candidate(path: Path) -> Candidate | None:
    try:
        status = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):  # a FIFO or device would block or never end
        return None
    return Candidate(path, status.st_size, status.st_mtime_ns)


def dicomdir_references(path: Path) -> list[Path]:
    """The files a DICOMDIR's directory records name (PS3.10 8.5, PS3.3 F.3: Referenced File
    ID, components relative to the DICOMDIR's folder); none when it cannot be read."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        directory = dcmread(path, force=True)
        records = directory.get("DirectoryRecordSequence", [])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return []
    references: list[Path] = []
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        references.append(_on_disk(path.parent, [str(part) for part in parts]))
    return references


def _on_disk(folder: Path, parts: list[str]) -> Path:
    """`folder/parts...`, each component matched without regard to case when the exact name
    is absent (File IDs are upper case, PS3.10 8.2; a mounted CD may show them in lower)."""
    current = folder
    for part in parts:
        exact = current / part
        if not exact.exists() and current.is_dir():
            match = next((p for p in current.iterdir() if p.name.upper() == part.upper()), None)
            exact = match or exact
        current = exact
    return current


# -- the journal ------------------------------------------------------------------------------


def journal_path(storage_root: Path, paths: Sequence[Path]) -> Path:
    """The journal of an import of `paths` (in any order)."""
    key = "\n".join(sorted(str(path.resolve()) for path in paths))
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return storage_root.resolve() / TMP_DIR / JOURNAL_FOLDER / f"{digest}.jsonl"


class Journal:
    """The files of earlier runs that need no second look, and this run's, one JSON line each;
    locked (flock) so that two imports of the same paths do not run at once."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed in close)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ImportBusy(
                    f"another pacsd import of these paths is running ({path})"
                ) from None
            raise
        self.done: dict[str, tuple[int, int]] = {}
        if resume:
            self._file.seek(0)
            self.done = dict(_journal_entries(self._file))
        else:
            self._file.truncate(0)

    def is_done(self, candidate: Candidate) -> bool:
        """Whether an earlier run finished this file, unchanged since."""
        return self.done.get(str(candidate.path)) == (candidate.size, candidate.mtime_ns)

    def record(self, result: FileResult) -> None:
        """Note a finished file (refused ones are tried again next time)."""
        if result.outcome not in _JOURNALED:
            return
        candidate = result.candidate
        entry = {"path": str(candidate.path), "size": candidate.size}
        entry |= {"mtime_ns": candidate.mtime_ns, "outcome": result.outcome.value}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()  # in the kernel: survives a SIGKILL of this process

    def close(self) -> None:
        """Flush, sync and unlock."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _journal_entries(lines: Iterable[str]) -> Iterator[tuple[str, tuple[int, int]]]:
    for line in lines:
        try:
            entry = json.loads(line)
            yield str(entry["path"]), (int(entry["size"]), int(entry["mtime_ns"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: that file is simply imported again


# -- one file ---------------------------------------------------------------------------------


class FileImporter:
    """Stores one file through the archive (or, dry, only checks it); thread-safe."""

    def __init__(
        self, archive: Archive | None, limits: LimitsSettings, dry_index: IndexDatabase | None
    ) -> None:
        self.archive = archive  # None: a dry run
        self.limits = limits
        self.dry_index = dry_index
        self._seen: set[str] = set()  # SOP Instance UIDs of this dry run
        self._lock = threading.Lock()

    def __call__(self, candidate: Candidate) -> FileResult:
        """Import `candidate`; every failure becomes a refused or skipped result."""
        try:
            return self._import(candidate)
        except DuplicateRejected as exc:  # duplicate_policy reject: the first one stays
            return FileResult(candidate, Outcome.DUPLICATE, exc.comment)
        except DicomStatusError as exc:
            subject = transfers.instance_subject(candidate.path)
            reason = f"{_in_file_terms(exc.comment)} (0x{exc.status:04X})"
            return FileResult(candidate, Outcome.REFUSED, reason, exc.status, subject)
        except OSError as exc:
            return FileResult(candidate, Outcome.REFUSED, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # one bad file must not end the run; its reason says what
            reason = f"processing failure: {type(exc).__name__}: {exc}"
            return FileResult(candidate, Outcome.REFUSED, reason, ProcessingFailure.status)

    def _import(self, candidate: Candidate) -> FileResult:
        with candidate.path.open("rb") as fp:
            head = fp.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                reason = _NO_HEADER if head[:2] in (b"\x08\x00", b"\x02\x00") else NOT_DICOM
                outcome = Outcome.REFUSED if reason == _NO_HEADER else Outcome.SKIPPED
                return FileResult(candidate, outcome, reason)
            _, meta = read_file_meta(fp)
        sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
        if sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            return FileResult(candidate, Outcome.SKIPPED, "DICOMDIR: its files are imported")
        sop_instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        if not sop_class_uid or not sop_instance_uid:
            raise CannotUnderstand("file meta lacks the Media Storage SOP Class or Instance UID")
        incoming = IncomingInstance(candidate.path, sop_class_uid, sop_instance_uid,
                                    IMPORT_AE_TITLE)  # fmt: skip
        if self.archive is None:
            return self._check(candidate, incoming)
        stored = self.archive.store(incoming)
        subject = (stored.study_instance_uid, stored.patient_id)
        outcome = _BY_STORE_OUTCOME[stored.outcome]
        return FileResult(candidate, outcome, subject=subject, sop_class_uid=sop_class_uid)

    def _check(self, candidate: Candidate, incoming: IncomingInstance) -> FileResult:
        """What `Archive.store` would decide, without writing: its limits and parse, the
        request's UIDs (PS3.4 B.2.3), and whether the index (or this run) has the instance."""
        limits = self.limits
        limit = int(limits.max_dataset_size)
        if candidate.size > limit + 64 * 1024:
            raise OutOfResources(f"data set larger than the maximum of {limit} bytes")
        with candidate.path.open("rb") as fp:
            parsed = parse_part10(fp, int(limits.max_inflated_size), limits.max_inflate_ratio)
        attributes = parsed.attributes
        if attributes.sop_class_uid != incoming.sop_class_uid:
            raise DatasetMismatch("SOP Class UID differs from Affected SOP Class UID")
        if attributes.sop_instance_uid != incoming.sop_instance_uid:
            raise DatasetMismatch("SOP Instance UID differs from Affected SOP Instance")
        subject = (attributes.study_instance_uid, attributes.patient_id)
        uid = attributes.sop_instance_uid
        with self._lock:
            again = uid in self._seen
            self._seen.add(uid)
        outcome = Outcome.DUPLICATE if again or self._indexed(uid) else Outcome.STORED
        return FileResult(candidate, outcome, subject=subject, sop_class_uid=incoming.sop_class_uid)

    def _indexed(self, sop_instance_uid: str) -> bool:
        if self.dry_index is None:
            return False
        query = text("SELECT 1 FROM instance WHERE sop_instance_uid = :uid")
        try:
            with self.dry_index.reading_connection() as connection:
                return connection.execute(query, {"uid": sop_instance_uid}).first() is not None
        except DBAPIError:  # no schema yet: an empty index
            return False


def _in_file_terms(comment: str) -> str:
    """The archive's C-STORE wording, for a file: its file meta stands for the request."""
    return comment.replace("Affected SOP Class UID", "the file meta's (0002,0002)").replace(
        "Affected SOP Instance", "the file meta's (0002,0003)"
    )


# -- a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    """What the command line chose."""

    jobs: int
    dry_run: bool = False
    resume: bool = True


def open_dry_index(settings: Settings) -> IndexDatabase | None:
    """The index a dry run looks duplicates up in; None when its SQLite file does not exist
    (a dry run never creates one)."""
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return None
    return IndexDatabase(create_index_engine(settings.database.url, pool_size=1))


def run_import(
    paths: Sequence[Path],
    settings: Settings,
    database: IndexDatabase | None,
    options: ImportOptions,
    progress: Progress,
) -> tuple[ImportReport, dict[transfers.StudyKey, transfers.StudyTally]]:
    """Import `paths` into the archive of `settings` and `database` (for a dry run: the one to
    look duplicates up in, if any); the report and, for the audit trail, the studies."""
    started = time.monotonic()
    files = open_store(settings.storage)
    archive, journal = None, None
    if not options.dry_run:
        if database is None:
            raise ValueError("an import needs its index database")
        policy = settings.storage.duplicate_policy
        archive = Archive(files, database, policy, settings.limits)
        files.tmp_dir.mkdir(parents=True, exist_ok=True)  # never prepare(): a server may run
        journal = Journal(journal_path(files.root, paths), options.resume)
    where = str(journal.path) if journal is not None else None
    report = ImportReport([str(p) for p in paths], options.dry_run, where)
    studies: dict[transfers.StudyKey, transfers.StudyTally] = {}
    try:
        found, missing = find_files(paths, files.root)
        todo = [c for c in found if journal is None or not journal.is_done(c)]
        report.already_done = len(found) - len(todo)
        progress.start(len(todo) + len(missing), sum(c.size for c in todo))

        def finished(result: FileResult) -> None:
            report.add(result)
            if journal is not None:
                journal.record(result)
                _tally(studies, result)
            progress.advance(result)

        for result in missing:
            finished(result)
        importer = FileImporter(archive, settings.limits, database if archive is None else None)
        report.interrupted = _run_pool(importer, todo, options.jobs, finished)
    finally:
        if journal is not None:
            journal.close()
        report.seconds = time.monotonic() - started
    return report, studies


def _run_pool(
    importer: Callable[[Candidate], FileResult],
    todo: Sequence[Candidate],
    jobs: int,
    finished: Callable[[FileResult], None],
) -> bool:
    """Run `importer` on `todo` in `jobs` threads, a few files ahead at most; results are
    handed to `finished` on this thread. True when Ctrl-C stopped it (files under way finish)."""
    pending: set[Future[FileResult]] = set()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pacsd-import") as pool:
        try:
            for candidate in todo:
                pending.add(pool.submit(importer, candidate))
                while len(pending) >= jobs * _IN_FLIGHT_PER_JOB:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(future.result())
            for future in list(pending):
                pending.discard(future)
                finished(future.result())
        except KeyboardInterrupt:
            for future in pending:
                if not future.cancel():
                    finished(future.result())
            return True
    return False


def _tally(studies: dict[transfers.StudyKey, transfers.StudyTally], result: FileResult) -> None:
    """Count an imported (or refused) instance under its study for the audit trail."""
    if result.outcome is Outcome.SKIPPED or not (result.sop_class_uid or result.status):
        return
    key = transfers.imported_key(result.outcome.value, result.status, result.subject)
    tally = studies.setdefault(key, transfers.StudyTally())
    tally.sop_classes[result.sop_class_uid or "unknown"] += 1
    if result.status:
        tally.statuses[result.status] += 1


# -- what the administrator sees --------------------------------------------------------------

_PLAIN_EVERY_S = 2.0
_LISTED = 20  # skipped files named in the summary (all of them with --json); refused: all
MB = 1_000_000


class PlainProgress:
    """A line every few seconds ("imported 120/500 files, 35.2 MB/s"), for logs and pipes."""

    def __init__(self, write: Callable[[str], None], verb: str = "imported") -> None:
        self.write = write
        self.verb = verb
        self.files = self.total_files = self.bytes = 0
        self.started = self.last = time.monotonic()

    def start(self, files: int, total_bytes: int) -> None:
        """Note the totals."""
        self.total_files = files
        self.started = self.last = time.monotonic()
        self.write(f"{files} files to import, {total_bytes / MB:.1f} MB")

    def advance(self, result: FileResult) -> None:
        """Count a file; write a line when the last one is a few seconds old."""
        self.files += 1
        self.bytes += result.candidate.size
        now = time.monotonic()
        if now - self.last >= _PLAIN_EVERY_S:
            self.last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        """Where the run is."""
        rate = self.bytes / MB / max(now - self.started, 1e-6)
        return f"{self.verb} {self.files}/{self.total_files} files, {rate:.1f} MB/s"

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *_: object) -> None:
        if self.files:
            self.write(self.line(time.monotonic()))


class BarProgress:
    """click's progress bar on the terminal (stderr): bytes done, files, MB/s and time left.

    click's and not rich's: pacsd had rich only for this bar, and structlog imports rich
    whenever it is installed, which cost every `pacsd` command 45 ms of its start-up.
    """

    def __init__(self) -> None:
        self.bar: Any = None  # click's ProgressBar, made once the totals are known
        self.tally = PlainProgress(lambda _line: None)  # the counts and rate, not its lines

    def start(self, files: int, total_bytes: int) -> None:
        """Show the bar with its totals."""
        self.tally.start(files, total_bytes)
        self.bar = click.progressbar(
            length=max(total_bytes, 1),
            label="importing",
            file=sys.stderr,
            show_percent=True,
            show_eta=True,
            item_show_func=lambda _: self.tally.line(time.monotonic()),
        )
        self.bar.__enter__()

    def advance(self, result: FileResult) -> None:
        """One more file."""
        self.tally.advance(result)
        if self.bar is not None:
            self.bar.update(result.candidate.size, result)

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def summary_lines(report: ImportReport) -> list[str]:
    """The human summary: totals, counts, and each refused file with its reason."""
    seconds = max(report.seconds, 1e-6)
    counts = ", ".join(f"{report.counts[o.value]} {o.value}" for o in Outcome)
    head = "dry run, nothing written: would be " if report.dry_run else ""
    lines = [
        f"{report.files} files, {report.bytes / MB:.1f} MB in {report.seconds:.1f} s "
        f"({report.files / seconds:.1f} files/s, {report.bytes / MB / seconds:.1f} MB/s)",
        f"{head}{counts}",
    ]
    if report.already_done:
        lines.append(
            f"{report.already_done} files already done by an earlier run, not read again "
            f"(journal {report.journal}; --no-resume imports them again)"
        )
    if report.interrupted:
        lines.append("interrupted: run the same command again to resume")
    if report.refused:
        lines.append(f"refused ({len(report.refused)}):")
        lines += [f"  {path}: {reason}" for path, reason in report.refused]
    if report.skipped:
        lines.append(f"skipped ({len(report.skipped)}):")
        lines += [f"  {path}: {reason}" for path, reason in report.skipped[:_LISTED]]
        if len(report.skipped) > _LISTED:
            lines.append(f"  ... and {len(report.skipped) - _LISTED} more (--json lists all)")
    return lines
