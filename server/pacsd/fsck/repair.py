"""Repair what `scan` found, without ever deleting an instance file.

- A row whose file is missing: the row goes (the archive cannot serve it), and with it the
  series, study and patient rows left without instances.
- A row whose file is damaged (size or SHA-256 differs): the row goes as above, so the
  instance is no longer served or confirmed by Storage Commitment, and the file moves to the
  quarantine folder.
- A file no row points to: it moves to the quarantine folder. It is not indexed again: such
  a file is an instance whose C-STORE never got success (the server stopped between the file
  and its row; the sender was told to retry) or a file a duplicate or replacement had already
  superseded, and indexing it could bring back a version the archive had replaced. An operator
  who wants it can send it again (e.g. `storescu`) from the quarantine folder.

The quarantine folder is `<root>/.quarantine/<UTC time of the run>/`, holding each file at its
path relative to the root and `manifest.jsonl`, one JSON line per file saying why. With an
object store (storage.backend s3) the file is an object: it is copied to the key
`quarantine/<UTC time of the run>/<path>` under the prefix and the original deleted;
`manifest.jsonl` is still written to the local folder above.
"""

from __future__ import annotations

import getpass
import json
import os
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, delete, exists, select

from pacsd import audit
from pacsd.fsck.scan import QUARANTINE_DIR, FsckReport, Problem, ProblemKind
from pacsd.index.database import IndexDatabase
from pacsd.index.ingest import refresh_modalities_in_study
from pacsd.index.models import Instance, Patient, Series, Study
from pacsd.storage.base import QUARANTINE_PREFIX, InstanceStore, ObjectQuarantine
from pacsd.storage.filesystem import fsync_directory

# Refuse to remove rows when more than this share of the index lost its files: that looks
# like storage that is not mounted, not like files that went missing.
MAX_MISSING_SHARE = 0.5
MIN_ROWS_FOR_GUARD = 10


def repair(database: IndexDatabase, files: InstanceStore, report: FsckReport) -> None:
    """Fix each problem of `report` in place; sets `problem.repair` for each one fixed."""
    missing = [p for p in report.problems if p.kind is ProblemKind.MISSING_FILE]
    if len(missing) >= MIN_ROWS_FOR_GUARD and len(missing) > report.instances * MAX_MISSING_SHARE:
        report.refusal = (
            f"{len(missing)} of {report.instances} indexed files are missing: is the storage "
            "root mounted? refusing to remove index rows"
        )
        return
    quarantine = Quarantine(files)
    removed: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for problem in report.problems:
        if problem.instance_pk is not None:
            subject = remove_instance_row(database, problem.instance_pk, problem.file_path)
            if subject is None:
                continue  # the row changed meanwhile: the server replaced the instance
            study_uid, patient_id, sop_class_uid = subject
            removed[(study_uid, patient_id)][sop_class_uid] += 1
            problem.repair = "index row removed"
        if problem.kind is not ProblemKind.MISSING_FILE:
            try:
                kept = quarantine.keep(problem)
            except OSError as exc:  # left for the next run, which will see an orphan file
                problem.detail = f"{problem.detail}; not moved: {exc.strerror or exc!r}"
                problem.repair = None
                continue
            problem.repair = ", ".join(filter(None, (problem.repair, f"file moved to {kept}")))
    report.quarantine = quarantine.location() if quarantine.used else None
    for (study_uid, patient_id), sop_classes in removed.items():
        audit.study_deleted(
            study_uid, patient_id or None, sop_classes, "fsck --repair", user=getpass.getuser()
        )


class Quarantine:
    """A folder of this run under `<root>/.quarantine/`, created on first use (with an object
    store, the folder keeps the manifest and the objects move below `quarantine/`)."""

    def __init__(self, files: InstanceStore) -> None:
        self.files = files
        self.root = files.root
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.folder = self.root / QUARANTINE_DIR / stamp
        self.used = False

    def location(self) -> Path | str:
        """The folder (filesystem) or the object key prefix (object store) of this run."""
        if isinstance(self.files, ObjectQuarantine):
            # key() normalises the path, dropping the "/": without it the prefix would also
            # name the folder of a second run in the same second ("<time>-1", see _create).
            return self.files.key(f"{QUARANTINE_PREFIX}{self.folder.name}") + "/"
        return self.folder

    def keep(self, problem: Problem) -> str:
        """Move the problem's file into the quarantine; returns its new path (root-relative)."""
        if not self.used:
            self._create()
        if isinstance(self.files, ObjectQuarantine):
            moved = f"{QUARANTINE_PREFIX}{self.folder.name}/{problem.file_path}"
            self.files.quarantine(problem.file_path, moved)
            self._note(problem)
            return moved
        target = self.folder / problem.file_path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / problem.file_path, target)
        fsync_directory(target.parent)
        fsync_directory((self.root / problem.file_path).parent)
        self._note(problem)
        return target.relative_to(self.root).as_posix()

    def _note(self, problem: Problem) -> None:
        with (self.folder / "manifest.jsonl").open("a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(problem.as_json()) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())

    def _create(self) -> None:
        base = self.folder
        for attempt in range(1, 100):  # two runs within one second get folders of their own
            try:
                self.folder.mkdir(parents=True)
                break
            except FileExistsError:
                self.folder = base.with_name(f"{base.name}-{attempt}")
        self.used = True


def remove_instance_row(
    database: IndexDatabase, instance_pk: int, file_path: str
) -> tuple[str, str, str] | None:
    """Delete the instance row if it still points to `file_path`, and its emptied parents;
    (Study Instance UID, Patient ID, SOP Class UID) of what went, None if the row changed."""
    with database.writing_connection() as connection:
        subject = connection.execute(
            select(Study.study_instance_uid, Patient.patient_id, Instance.sop_class_uid)
            .join(Series, Series.pk == Instance.series_fk)
            .join(Study, Study.pk == Series.study_fk)
            .join(Patient, Patient.pk == Study.patient_fk)
            .where(Instance.pk == instance_pk, Instance.file_path == file_path)
        ).one_or_none()
        if subject is None:
            return None
        series_pk = connection.execute(
            delete(Instance).where(Instance.pk == instance_pk).returning(Instance.series_fk)
        ).scalar_one()
        _remove_if_empty(connection, int(series_pk))
    return str(subject[0]), str(subject[1]), str(subject[2])


def _remove_if_empty(connection: Connection, series_pk: int) -> None:
    """Remove the series, study and patient rows that no longer hold any instance."""
    if connection.scalar(select(exists().where(Instance.series_fk == series_pk))):
        return
    study_pk = connection.execute(
        delete(Series).where(Series.pk == series_pk).returning(Series.study_fk)
    ).scalar_one()
    if connection.scalar(select(exists().where(Series.study_fk == study_pk))):
        refresh_modalities_in_study(connection, study_pk)
        return
    patient_pk = connection.execute(
        delete(Study).where(Study.pk == study_pk).returning(Study.patient_fk)
    ).scalar_one()
    if not connection.scalar(select(exists().where(Study.patient_fk == patient_pk))):
        connection.execute(delete(Patient).where(Patient.pk == patient_pk))
