"""Delete studies, series or instances: index rows first, files after, audited.

One write transaction removes the instance rows and the series, study and patient rows left
without instances (Modalities in Study of a study that keeps other series is refreshed);
only once it committed are the files removed, and only the files of the rows it removed:
never a folder's content, so a file a concurrent C-STORE just renamed into the same series
folder stays with the row it is getting. A file whose removal fails is logged and left for
`pacsd fsck` (an orphan file is repairable, a row without its file is not). When the COMMIT's
outcome is unknown, no file is touched.

A C-STORE into a study being deleted ends up whole or absent: its transaction either commits
first (its row is then among those removed, and its file with it) or after (it creates the
study, series and patient rows again, and its file is not on the deletion's list). On SQLite
the writers take turns (index/database.py); on PostgreSQL a store that commits between the
deletion's statements makes a parent's removal fail on its foreign key, and the whole
deletion is retried, the new instance then included. The store that loses such a race is
retried by the index writer, or fails and removes its own file (archive.py).

Each study that lost instances gets a DICOM Study Deleted audit record (PS3.15 A.5.3.5) with
the SOP classes and counts removed and the reason ("deleted by ... via http", "retention:
...").
"""

from __future__ import annotations

import enum
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Connection, delete, exists, select
from sqlalchemy.exc import IntegrityError, OperationalError

from pacsd import audit
from pacsd.index.database import IndexDatabase
from pacsd.index.ingest import refresh_modalities_in_study
from pacsd.index.models import Instance, Patient, Series, Study
from pacsd.logs import get_logger
from pacsd.storage.base import InstanceStore

log = get_logger("pacsd.admin")
ATTEMPTS = 5  # a deletion that loses a race with a concurrent store is retried this often
CHUNK = 500  # values per IN list


class Scope(enum.StrEnum):
    """What a UID names."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


_UID_COLUMNS = {
    Scope.STUDY: Study.study_instance_uid,
    Scope.SERIES: Series.series_instance_uid,
    Scope.INSTANCE: Instance.sop_instance_uid,
}


@dataclass
class StudyLoss:
    """What one study loses: its patient, and the instances removed per SOP class."""

    patient_id: str
    sop_classes: Counter[str] = field(default_factory=Counter)
    instances: int = 0
    bytes: int = 0


@dataclass
class Deletion:
    """A deletion (or its plan): what it covers, and what became of the files."""

    scope: Scope
    requested: list[str]
    missing: list[str] = field(default_factory=list)  # UIDs the index does not hold
    studies: dict[str, StudyLoss] = field(default_factory=dict)
    file_paths: list[str] = field(default_factory=list)
    files_left: list[str] = field(default_factory=list)  # not removed: for `pacsd fsck`
    done: bool = False  # False: a plan (dry run)

    @property
    def instances(self) -> int:
        """Instances covered."""
        return sum(loss.instances for loss in self.studies.values())

    @property
    def bytes(self) -> int:
        """Bytes of their files, as the index recorded them."""
        return sum(loss.bytes for loss in self.studies.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the admin API's and `--json`'s answer)."""
        return {
            "scope": str(self.scope),
            "deleted": self.done,
            "requested": self.requested,
            "missing": self.missing,
            "studies": {
                uid: {
                    "instances": loss.instances,
                    "bytes": loss.bytes,
                    "sop_classes": dict(loss.sop_classes),
                }
                for uid, loss in self.studies.items()
            },
            "instances": self.instances,
            "bytes": self.bytes,
            "files_left": self.files_left,
        }


def plan(database: IndexDatabase, scope: Scope, uids: Sequence[str]) -> Deletion:
    """What deleting `uids` would remove now (read only; blocking)."""
    with database.reading_connection() as connection:
        deletion, _pks = _collect(connection, scope, uids)
    return deletion


def delete_entities(
    database: IndexDatabase,
    files: InstanceStore,
    scope: Scope,
    uids: Sequence[str],
    reason: str,
    user: str | None,
) -> Deletion:
    """Delete `uids` (their rows, then their files), audit each study that lost instances;
    blocking. Raises what the database raised when the deletion could not commit (then no
    file was touched)."""
    deletion = _delete_rows(database, scope, uids)
    deletion.done = True
    for study_uid, loss in deletion.studies.items():
        audit.study_deleted(study_uid, loss.patient_id or None, loss.sop_classes, reason, user)
    _remove_files(files, deletion)
    log.info(
        "deleted",
        scope=str(scope),
        requested=len(uids),
        studies=len(deletion.studies),
        instances=deletion.instances,
        bytes=deletion.bytes,
        missing=len(deletion.missing),
        files_left=len(deletion.files_left),
        reason=reason,
        user=user,
    )
    return deletion


def _delete_rows(database: IndexDatabase, scope: Scope, uids: Sequence[str]) -> Deletion:
    """The one transaction, retried when a concurrent store made it fail (see above)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with database.writing_connection() as connection:
                deletion, instance_pks = _collect(connection, scope, uids)
                _remove_rows(connection, instance_pks)
            return deletion
        except (IntegrityError, OperationalError) as exc:
            if attempt == ATTEMPTS:
                raise
            log.info("deletion raced with a store; retrying", attempt=attempt, error=repr(exc))
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _collect(
    connection: Connection, scope: Scope, uids: Sequence[str]
) -> tuple[Deletion, list[tuple[int, int, int]]]:
    """The instances under `uids`: the Deletion and (instance pk, series pk, study pk)."""
    column = _UID_COLUMNS[scope]
    wanted = list(dict.fromkeys(uids))
    deletion = Deletion(scope, wanted)
    pks: list[tuple[int, int, int]] = []
    seen: set[str] = set()
    statement = (
        select(
            column,
            Instance.pk,
            Instance.series_fk,
            Series.study_fk,
            Instance.file_path,
            Instance.file_size,
            Instance.sop_class_uid,
            Study.study_instance_uid,
            Patient.patient_id,
        )
        .select_from(Instance)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .join(Patient, Study.patient_fk == Patient.pk)
    )
    for chunk in _chunks(wanted):
        for row in connection.execute(statement.where(column.in_(chunk)).order_by(Instance.pk)):
            uid, instance_pk, series_pk, study_pk, path, size, sop_class, study_uid, patient = row
            seen.add(uid)
            pks.append((instance_pk, series_pk, study_pk))
            loss = deletion.studies.setdefault(study_uid, StudyLoss(patient or ""))
            loss.sop_classes[sop_class] += 1
            loss.instances += 1
            loss.bytes += int(size)
            deletion.file_paths.append(path)
    deletion.missing = [uid for uid in wanted if uid not in seen]
    return deletion, pks


def _remove_rows(connection: Connection, instances: list[tuple[int, int, int]]) -> None:
    """Remove the instance rows, then the series, studies and patients left empty."""
    for chunk in _chunks([pk for pk, _series, _study in instances]):
        connection.execute(delete(Instance).where(Instance.pk.in_(chunk)))
    series_pks = sorted({series for _pk, series, _study in instances})
    study_pks = sorted({study for _pk, _series, study in instances})
    for chunk in _chunks(series_pks):
        connection.execute(
            delete(Series).where(
                Series.pk.in_(chunk), ~exists().where(Instance.series_fk == Series.pk)
            )
        )
    patient_pks: set[int] = set()
    for chunk in _chunks(study_pks):
        removed = connection.execute(
            delete(Study)
            .where(Study.pk.in_(chunk), ~exists().where(Series.study_fk == Study.pk))
            .returning(Study.pk, Study.patient_fk)
        ).all()
        patient_pks.update(patient for _study, patient in removed)
        for study_pk in set(chunk) - {study for study, _patient in removed}:
            refresh_modalities_in_study(connection, study_pk)  # it keeps other series
    for chunk in _chunks(sorted(patient_pks)):
        connection.execute(
            delete(Patient).where(
                Patient.pk.in_(chunk), ~exists().where(Study.patient_fk == Patient.pk)
            )
        )


def _remove_files(files: InstanceStore, deletion: Deletion) -> None:
    """Remove the deleted rows' files, then their folders if that left them empty."""
    folders: set[PurePosixPath] = set()
    for path in deletion.file_paths:
        try:
            files.remove(path)
        except (OSError, ValueError) as exc:
            log.warning("file of a deleted instance not removed; pacsd fsck will find it",
                        file=path, error=repr(exc))  # fmt: skip
            deletion.files_left.append(path)
            continue
        folders.add(PurePosixPath(path).parent)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        _remove_empty_folders(files, folder)


def _remove_empty_folders(files: InstanceStore, folder: PurePosixPath) -> None:
    """rmdir the series folder and its study folders while they are empty. A store that
    created one of them an instant before renaming its file into it finds it gone and makes it
    again (FilesystemStore._rename_into_place)."""
    while folder.parts:
        local = files.local_path(str(folder))  # None: an object store has no folders
        if local is None:
            return
        try:
            os.rmdir(local)
        except (OSError, ValueError):
            return  # not empty (or gone): leave it and its parents
        folder = folder.parent


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])
