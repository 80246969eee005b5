"""Retention: delete the studies the configured rules no longer keep (settings `retention`).

Two rules, each optional: studies whose last instance arrived more than `max_age_days` ago,
and, while the storage root has less free space than `min_free_space`, the studies whose last
instance arrived longest ago. A run deletes at most `max_studies_per_run` studies, one
transaction each (pacsd.admin.delete: index first, files after, audited as Study Deleted with
the rule as its reason). A dry run only lists them. The server runs the rules every `interval`
seconds in a thread of the leading process (`RetentionWorker`); `pacsd retention run` runs
them once. A study that receives an instance while a run deletes it is deleted with it.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from pacsd.admin.browse import iso_time
from pacsd.admin.delete import Scope, delete_entities
from pacsd.index.cluster import ArchiveBusy, archive_lock
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Series, Study
from pacsd.logs import get_logger
from pacsd.settings import RetentionSettings
from pacsd.storage.base import InstanceStore

log = get_logger("pacsd.retention")
FIRST_RUN_DELAY_S = 60.0  # after start, or `interval` when shorter
STOP_TIMEOUT_S = 10.0


@dataclass
class Candidate:
    """A study a rule no longer keeps, and what became of it."""

    study_instance_uid: str
    last_received: datetime
    instances: int
    bytes: int
    reason: str
    deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "StudyInstanceUID": self.study_instance_uid,
            "last_received": iso_time(self.last_received),
            "instances": self.instances,
            "bytes": self.bytes,
            "reason": self.reason,
            "deleted": self.deleted,
        }


def has_rules(rules: RetentionSettings) -> bool:
    """Whether any rule is configured."""
    return rules.max_age_days is not None or rules.min_free_space is not None


def run(
    database: IndexDatabase,
    files: InstanceStore,
    rules: RetentionSettings,
    dry_run: bool,
    now: datetime | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Apply `rules` once (blocking): the studies due, deleted unless `dry_run`, until
    `stopping()` says so; JSON-ready. One run at a time in the archive: several nodes on one
    PostgreSQL take turns (index/cluster.archive_lock; ArchiveBusy when another runs)."""
    if dry_run:
        return _run(database, files, rules, dry_run, now, stopping)
    with archive_lock(database, "retention"):
        return _run(database, files, rules, dry_run, now, stopping)


def _run(
    database: IndexDatabase,
    files: InstanceStore,
    rules: RetentionSettings,
    dry_run: bool,
    now: datetime | None,
    stopping: Callable[[], bool],
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    free_before = _free(files)
    aged = _aged(database, rules, now)
    crowded = _crowded(database, rules, free_before, {c.study_instance_uid for c in aged})
    candidates = (aged + crowded)[: rules.max_studies_per_run]
    by_space = {id(candidate) for candidate in crowded}
    for candidate in candidates:
        if dry_run or stopping():
            break
        watermark = rules.min_free_space
        if id(candidate) in by_space and watermark is not None and _free(files) >= watermark:
            break  # enough space again (the files' sizes were an estimate of what is freed)
        deletion = delete_entities(
            database, files, Scope.STUDY, [candidate.study_instance_uid], candidate.reason, None
        )
        candidate.deleted = bool(deletion.studies)
    report = {
        "dry_run": dry_run,
        "max_age_days": rules.max_age_days,
        "min_free_space": None if rules.min_free_space is None else int(rules.min_free_space),
        "free_bytes_before": free_before,
        "free_bytes_after": _free(files),
        "studies": [candidate.as_dict() for candidate in candidates],
        "deleted_studies": sum(candidate.deleted for candidate in candidates),
        "deleted_instances": sum(c.instances for c in candidates if c.deleted),
        "deleted_bytes": sum(c.bytes for c in candidates if c.deleted),
    }
    log.info(
        "retention run",
        dry_run=dry_run,
        due=len(candidates),
        deleted_studies=report["deleted_studies"],
        deleted_instances=report["deleted_instances"],
        deleted_bytes=report["deleted_bytes"],
    )
    return report


def _studies_by_age() -> Any:
    """Studies with their last arrival, instance count and bytes, oldest first."""
    last = func.max(Instance.received_at)
    statement = (
        select(
            Study.study_instance_uid, last, func.count(Instance.pk), func.sum(Instance.file_size)
        )
        .select_from(Instance)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .group_by(Study.study_instance_uid)
        .order_by(last, Study.study_instance_uid)
    )
    return statement, last


def _aged(database: IndexDatabase, rules: RetentionSettings, now: datetime) -> list[Candidate]:
    if rules.max_age_days is None:
        return []
    days = rules.max_age_days
    statement, last = _studies_by_age()
    cutoff = now - timedelta(days=days)
    statement = statement.having(last < cutoff).limit(rules.max_studies_per_run)
    reason = f"retention: older than {days} days"
    with database.reading_connection() as connection:
        return [
            Candidate(uid, _aware(received), int(count), int(size or 0), reason)
            for uid, received, count, size in connection.execute(statement)
        ]


def _crowded(
    database: IndexDatabase, rules: RetentionSettings, free: int, taken: set[str]
) -> list[Candidate]:
    """The oldest studies whose files would bring free space above the watermark."""
    watermark = rules.min_free_space
    if watermark is None or free >= watermark:
        return []
    statement, _last = _studies_by_age()
    statement = statement.limit(rules.max_studies_per_run + len(taken))
    reason = f"retention: free space under {watermark.human_readable(decimal=True)}"
    chosen: list[Candidate] = []
    with database.reading_connection() as connection:
        for uid, received, count, size in connection.execute(statement):
            if free >= watermark:
                break
            if uid in taken:
                continue
            chosen.append(Candidate(uid, _aware(received), int(count), int(size or 0), reason))
            free += int(size or 0)
    return chosen


def _free(files: InstanceStore) -> int:
    return shutil.disk_usage(files.root).free


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class RetentionWorker:
    """The server's periodic run of the rules: a thread of the leading process, never the
    event loop (database and file work)."""

    def __init__(
        self, database: IndexDatabase, files: InstanceStore, rules: RetentionSettings
    ) -> None:
        self.database = database
        self.files = files
        self.rules = rules
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        """Run the rules every `interval` seconds from now on (the first run sooner)."""
        log.info(
            "retention enabled",
            max_age_days=self.rules.max_age_days,
            min_free_space=self.rules.min_free_space,
            interval=self.rules.interval,
            dry_run=self.rules.dry_run,
        )
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop after the deletion in progress, waiting at most `timeout`."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = min(self.rules.interval, FIRST_RUN_DELAY_S)
        while not self._stopping.wait(wait):
            try:
                run(
                    self.database,
                    self.files,
                    self.rules,
                    self.rules.dry_run,
                    stopping=self._stopping.is_set,
                )
            except ArchiveBusy:
                log.info("retention runs on another node now; skipped until the next interval")
            except Exception:
                log.exception("retention run failed; trying again at the next interval")
            wait = self.rules.interval
