"""One thread writes the index rows of every association's C-STOREs, in group commits.

Each C-STORE handler hands its record to `IndexWriter.record` and waits: the writer takes every
record waiting at that moment (up to `max_batch`), writes them in one transaction and commits
once, then answers each handler with its own outcome. A response therefore still follows its
own durable row (SQLite `synchronous=FULL`, PostgreSQL's commit), but eight associations
storing at once share one commit, one fsync and one lock instead of queueing for eight, and
SQLite sees a single writer instead of busy-waiting connections.

When a batch fails as a whole (a constraint, a lost connection), it is rolled back and each
record is retried in a transaction of its own, so one bad record fails only its own C-STORE.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from pacsd.index.database import IndexDatabase
from pacsd.index.ingest import IngestResult, InstanceRecord, record_instance
from pacsd.logs import get_logger

MAX_BATCH = 64
STOP_TIMEOUT_S = 30.0

log = get_logger("pacsd.index")


@dataclass
class _Job:
    record: InstanceRecord
    replace: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: BaseException | None = None


_STOP = object()


class IndexWriter:
    """The process's single writer of instance rows (started on first use)."""

    def __init__(self, index: IndexDatabase, max_batch: int = MAX_BATCH) -> None:
        self.index = index
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0
        self.records = 0

    def record(self, record: InstanceRecord, replace: bool) -> IngestResult:
        """Write `record` and return once its row is committed; raise what writing it raised."""
        self._ensure_started()
        job = _Job(record, replace)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(STOP_TIMEOUT_S)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch, stopping = self._next_batch()
            if batch:
                self._write(batch)
            if stopping:
                return

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """What is waiting now (blocking for the first), and whether a stop came with it."""
        batch: list[_Job] = []
        item = self._queue.get()
        while True:
            if not isinstance(item, _Job):
                return batch, True
            batch.append(item)
            if len(batch) >= self.max_batch:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _write(self, batch: list[_Job]) -> None:
        try:
            with self.index.writing_connection() as connection:
                results = [record_instance(connection, job.record, job.replace) for job in batch]
        except Exception as exc:
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
        finally:
            for job in batch:
                job.done.set()

    def _write_alone(self, job: _Job) -> None:
        try:
            with self.index.writing_connection() as connection:
                job.result = record_instance(connection, job.record, job.replace)
        except Exception as exc:
            job.error = exc
