"""The index rows of every association's C-STOREs, written in group commits.

Each C-STORE handler hands its record to `IndexWriter.record` and waits for its turn to write.
Whoever gets the turn writes every record waiting at that moment (its own among them, up to
`max_batch`) in one transaction and commits once; a handler whose record was in an earlier
batch finds it done when its turn comes and returns at once. A response therefore still
follows its own durable row (SQLite `synchronous=FULL`, PostgreSQL's commit), but eight
associations storing at once share one commit, one fsync and one lock instead of queueing for
eight, SQLite sees one writer per process instead of busy-waiting connections, and a lone
association writes in its own thread with no hand-over to another one.

When a batch fails as a whole (a constraint, a lost connection), it is rolled back and each
record is retried in a transaction of its own, so one bad record fails only its own C-STORE.
A batch whose COMMIT failed may have been committed all the same: its retries then find their
own rows (index/ingest.py), and a record that cannot be retried fails with CommitInDoubt so
that the archive keeps its file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from pacsd import metrics
from pacsd.index.database import CommitInDoubt, IndexDatabase
from pacsd.index.ingest import IngestResult, InstanceRecord, record_instance
from pacsd.logs import get_logger

MAX_BATCH = 64

log = get_logger("pacsd.index")


@dataclass
class _Job:
    record: InstanceRecord
    replace: bool
    done: bool = False
    in_doubt: bool = False  # a batch holding it failed at COMMIT
    result: IngestResult | None = None
    error: BaseException | None = None


class IndexWriter:
    """The process's writer of instance rows: one batch at a time, group-committed."""

    def __init__(self, index: IndexDatabase, max_batch: int = MAX_BATCH) -> None:
        self.index = index
        self.max_batch = max_batch
        self._waiting: list[_Job] = []
        self._waiting_lock = threading.Lock()
        self._turn = threading.Lock()  # held by the thread writing a batch
        self.commits = 0
        self.records = 0

    def record(self, record: InstanceRecord, replace: bool) -> IngestResult:
        """Write `record` and return once its row is committed; raise what writing it raised."""
        job = _Job(record, replace)
        with self._waiting_lock:
            self._waiting.append(job)
        while not job.done:
            with self._turn:
                if not job.done:
                    self._write(self._take_batch())
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _take_batch(self) -> list[_Job]:
        with self._waiting_lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        return batch

    def _rows(self, batch: list[_Job]) -> list[IngestResult]:
        """One transaction on the kept connection; once more on a new connection when the
        kept one turns out dead before COMMIT (the database restarted while it was idle)."""
        for attempt in range(2):
            try:
                with self.index.writing_connection(reuse=True) as connection:
                    return [record_instance(connection, job.record, job.replace) for job in batch]
            except DBAPIError as exc:
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, batch: list[_Job]) -> None:
        try:
            results = self._rows(batch)
        except Exception as exc:
            for job in batch:
                job.in_doubt = isinstance(exc, CommitInDoubt)
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("index batch failed; writing its rows one by one", error=repr(exc))
                for job in batch:
                    self._write_alone(job)
        else:
            for job, result in zip(batch, results, strict=True):
                job.result = result
            self.commits += 1
            self.records += len(batch)
            metrics.index_batch_written(len(batch))
        finally:
            for job in batch:
                job.done = True

    def _write_alone(self, job: _Job) -> None:
        try:
            with self.index.writing_connection() as connection:
                job.result = record_instance(connection, job.record, job.replace)
        except CommitInDoubt as exc:
            job.error = exc
        except Exception as exc:
            job.error = CommitInDoubt(repr(exc)) if job.in_doubt else exc
            job.error.__cause__ = exc
