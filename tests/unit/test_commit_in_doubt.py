"""A COMMIT whose outcome is unknown never loses an acknowledged instance.

When the connection to the index fails during COMMIT, the transaction may have been durable all
the same (PostgreSQL commits, then the reply is lost). pacsd must then neither remove the file
the row may point to nor, on the peer's resend, answer success for a row whose file is gone.
The failure is injected after the real commit, on a real SQLite file and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pacsd.archive import Archive, IncomingInstance, StoreOutcome
from pacsd.errors import OutOfResources
from pacsd.index.database import CommitInDoubt, IndexDatabase, create_index_engine
from pacsd.index.ingest import IngestOutcome
from pacsd.index.models import Instance
from pacsd.index.schema import ensure_schema
from pacsd.index.writer import IndexWriter
from pacsd.settings import DuplicatePolicy
from pacsd.storage.filesystem import FilesystemStore
from tests.datagen import StudyContext, ct_image, write_part10
from tests.unit.test_index_writer import record


@pytest.fixture
def database(database_url: str) -> Iterator[IndexDatabase]:
    index = IndexDatabase(create_index_engine(database_url))
    ensure_schema(index.engine)
    yield index
    index.dispose()


def fail_after_next_commit(database: IndexDatabase) -> Callable[[], None]:
    """The next COMMIT takes effect, then raises as if the connection had dropped."""
    dialect = database.engine.dialect
    real_commit = dialect.do_commit

    def commit_then_fail(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        dialect.do_commit = real_commit  # type: ignore[method-assign]
        raise ConnectionResetError("connection lost after COMMIT")

    dialect.do_commit = commit_then_fail  # type: ignore[method-assign]
    return lambda: setattr(dialect, "do_commit", real_commit)


def test_a_failed_commit_is_reported_in_doubt_and_a_retry_finds_its_own_row(
    database: IndexDatabase,
) -> None:
    """The writer raises CommitInDoubt; recording the same record again is CREATED, not
    'already present', since the row is this record's own."""
    writer = IndexWriter(database)
    restore = fail_after_next_commit(database)
    try:
        with pytest.raises(CommitInDoubt):
            writer.record(record(1), replace=False)
    finally:
        restore()
    assert writer.record(record(1), replace=False).outcome is IngestOutcome.CREATED
    assert writer.record(record(1), replace=True).outcome is IngestOutcome.CREATED
    other_file = replace(record(1), file_path="aa/bb/other.dcm")
    assert writer.record(other_file, replace=False).outcome is IngestOutcome.ALREADY_PRESENT


def test_archive_keeps_the_file_when_the_commit_is_in_doubt(
    database: IndexDatabase, tmp_path: Path
) -> None:
    """The C-STORE fails with Out of Resources, but the row that did commit still has its file;
    the peer's resend then succeeds and the index points to an existing, whole file."""
    files = FilesystemStore(tmp_path / "storage", 0)
    files.prepare()
    archive = Archive(files, database, DuplicatePolicy.KEEP_FIRST)
    ds = ct_image(StudyContext(), size=16)
    spool = write_part10(ds, tmp_path / "in.dcm")
    incoming = IncomingInstance(spool, ds.SOPClassUID, ds.SOPInstanceUID, "TEST")
    restore = fail_after_next_commit(database)
    try:
        with pytest.raises(OutOfResources):
            archive.store(incoming)
    finally:
        restore()
    assert archive.store(incoming).outcome is StoreOutcome.DUPLICATE_KEPT_FIRST
    with database.reading() as session:
        [row] = session.execute(select(Instance.file_path)).all()
    assert files.absolute(row.file_path).is_file()
