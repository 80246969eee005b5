"""The index writer (server/pacsd/index/writer.py) on a real SQLite file and PostgreSQL.

Concurrent stores are written in group commits, each caller still gets its own outcome once
its row is committed, and a record that cannot be written fails alone. On SQLite, another
connection holding the write lock makes the callers queue up behind the first one, so that
the batches they form are known.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from pacsd.dicom.header import InstanceAttributes
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.ingest import IngestOutcome, InstanceRecord
from pacsd.index.models import Instance
from pacsd.index.schema import ensure_schema
from pacsd.index.writer import IndexWriter

THREADS = 8
JOIN_TIMEOUT_S = 60.0


@pytest.fixture
def writer(database_url: str) -> Iterator[IndexWriter]:
    database = IndexDatabase(create_index_engine(database_url))
    ensure_schema(database.engine)
    yield IndexWriter(database)
    database.dispose()


def record(number: int, header: dict[str, Any] | None = None) -> InstanceRecord:
    uid = f"1.2.826.0.1.3680043.10.1307.99.{number}"
    attributes = InstanceAttributes(
        patient_id="PAT-W",
        issuer_of_patient_id="",
        patient_name="Writer^Test",
        patient_birth_date="",
        patient_sex="",
        study_instance_uid="1.2.826.0.1.3680043.10.1307.98.1",
        study_date="20261130",
        study_time="",
        accession_number="",
        study_id="",
        referring_physician_name="",
        study_description="",
        series_instance_uid=f"1.2.826.0.1.3680043.10.1307.97.{number % 2}",
        modality="CT",
        series_number=None,
        series_description="",
        body_part_examined="",
        series_date="",
        series_time="",
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        instance_number=number,
    )
    return InstanceRecord(
        attributes=attributes,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"aa/bb/{number}.dcm",
        file_size=1,
        file_sha256="0" * 64,
        received_at=datetime.now(UTC),
        calling_ae_title="TEST",
        header=header if header is not None else {"00080018": {"vr": "UI", "Value": [uid]}},
    )


def rows(writer: IndexWriter) -> int:
    with writer.index.reading() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def record_concurrently(
    writer: IndexWriter, records: list[InstanceRecord], lock: HeldWriteLock | None = None
) -> list[Any]:
    """Each record from a thread of its own, in order; the outcome or the exception of each.

    With `lock`, every thread starts while it is held, so they all queue behind the first.
    """
    results: list[Any] = [None] * len(records)

    def one(position: int) -> None:
        try:
            results[position] = writer.record(records[position], replace=False).outcome
        except Exception as exc:
            results[position] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(records))]
    with lock or nullcontext():
        for thread in threads:
            thread.start()
            time.sleep(0.01)  # queued in order behind the first
        if lock is not None:
            time.sleep(0.5)  # all queued while the first waits for the lock
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads)
    return results


class HeldWriteLock:
    """On SQLite, another connection's write lock, so that the writer's jobs queue up behind
    its first (blocked) transaction and form one batch when released."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.connection = (
            sqlite3.connect(url.database or "", isolation_level=None)
            if url.get_backend_name() == "sqlite"
            else None
        )

    def __enter__(self) -> HeldWriteLock:
        if self.connection is not None:
            self.connection.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.connection is not None:
            self.connection.execute("COMMIT")
            self.connection.close()


def record_behind_lock(
    writer: IndexWriter, database_url: str, records: list[InstanceRecord]
) -> list[Any]:
    return record_concurrently(writer, records, HeldWriteLock(database_url))


def test_concurrent_records_are_all_written_in_fewer_commits(
    writer: IndexWriter, database_url: str
) -> None:
    records = [record(n) for n in range(THREADS)]
    results = record_behind_lock(writer, database_url, records)
    assert results == [IngestOutcome.CREATED] * THREADS
    assert rows(writer) == THREADS
    assert writer.records == THREADS
    if database_url.startswith("sqlite"):
        assert writer.commits <= 2  # the blocked first one, then all the others at once


def test_a_record_already_present_is_reported_to_its_caller_only(writer: IndexWriter) -> None:
    assert writer.record(record(1), replace=False).outcome is IngestOutcome.CREATED
    # Every write has a file of its own (storage/filesystem.py): a resend's row differs there.
    resent = replace(record(1), file_path="aa/bb/1-resent.dcm")
    results = record_concurrently(writer, [resent, record(2), record(3)])
    assert results == [
        IngestOutcome.ALREADY_PRESENT,
        IngestOutcome.CREATED,
        IngestOutcome.CREATED,
    ]
    assert rows(writer) == 3


def test_a_record_that_cannot_be_written_fails_alone(
    writer: IndexWriter, database_url: str
) -> None:
    unserializable = record(5, header={"x": object()})  # the JSON column refuses it
    records = [record(4), unserializable, record(6), record(7)]
    results = record_behind_lock(writer, database_url, records)
    assert isinstance(results[1], Exception)
    assert [results[0], *results[2:]] == [IngestOutcome.CREATED] * 3
    assert rows(writer) == 3


def test_more_records_than_a_batch_holds_are_all_written(
    writer: IndexWriter, database_url: str
) -> None:
    writer.max_batch = 3
    records = [record(n) for n in range(10, 10 + THREADS)]
    results = record_behind_lock(writer, database_url, records)
    assert results == [IngestOutcome.CREATED] * THREADS
    assert rows(writer) == THREADS
    assert writer.commits >= 3  # 1 + 7 records in batches of at most 3
