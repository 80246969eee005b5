"""One engine per process and a session per unit of work, for SQLite and PostgreSQL alike.

SQLite is opened in WAL mode with foreign keys on and `synchronous=FULL`, so that a committed
index row survives a power loss like the fsynced file it points to. Write units begin with
`BEGIN IMMEDIATE` so that concurrent writers never fail when a read transaction tries to become
a write transaction; pacsd's own writers queue before that, on a lock file (`WriterLock`).
PostgreSQL connections are checked before use (pool_pre_ping) and time out on connect, so that
an outage fails C-STOREs quickly with 0xA700 and pacsd reconnects by itself when the server is
back.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

_WRITE_OPTION = "pacsd_write"
SQLITE_BUSY_TIMEOUT_S = 30.0


def create_index_engine(url: str, pool_size: int = 10) -> Engine:
    """The process's engine for the index database at `url`."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # pool_pre_ping: a pooled connection that died with its server (restart, failover) is
        # replaced on checkout, so pacsd recovers from an outage without a restart.
        # connect_timeout: an unreachable server fails a C-STORE (0xA700) within seconds
        # instead of the kernel's minutes of TCP retries. The URL's own value wins.
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args=connect_args,
            json_serializer=_json_text,
            json_deserializer=orjson.loads,
        )
    database = parsed.database or ""
    if database in ("", ":memory:") or "mode=memory" in url:
        raise ValueError("pacsd needs a SQLite database file, not an in-memory database")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _json_text(value: Any) -> str:
    """JSON columns (the instance headers) by orjson: several times the json module's speed
    on a header of a hundred elements, for every stored instance and every C-FIND match."""
    return orjson.dumps(value).decode("utf-8")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (_sqlite_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    writer = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


class WriterLock:
    """One SQLite writer at a time across pacsd's processes, queued instead of polled.

    SQLite lets one connection write at a time; the others wait in its busy handler, which
    sleeps 1, 2, 5, 10 ... ms between looks: with several worker processes storing at once, a
    commit waited milliseconds after the lock was free. A blocking flock(2) on a file beside the
    database wakes the next writer as the lock is released (a thread lock first: flock is per
    open file, shared by this process's threads). PostgreSQL needs none of this: a no-op.
    """

    def __init__(self, path: Path | None) -> None:
        self._thread_lock = threading.RLock()  # a write unit inside another is the same one
        self._depth = 0  # changed only by the thread holding _thread_lock
        self._descriptor = -1
        if path is not None:
            self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @classmethod
    def for_engine(cls, engine: Engine) -> WriterLock:
        """The lock of `engine`'s database (a no-op one unless SQLite)."""
        if engine.dialect.name != "sqlite" or not engine.url.database:
            return cls(None)
        return cls(Path(f"{engine.url.database}-pacsd-writer.lock"))

    def __enter__(self) -> None:
        if self._descriptor < 0:
            return
        self._thread_lock.acquire()
        if self._depth == 0:
            try:
                fcntl.flock(self._descriptor, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1

    def __exit__(self, *_: object) -> None:
        if self._descriptor < 0:
            return
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class CommitInDoubt(Exception):
    """COMMIT failed: the transaction may or may not be durable."""


class IndexDatabase:
    """The index database of this process: sessions for reading and for writing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = sessionmaker(engine, expire_on_commit=False)
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._write_lock = WriterLock.for_engine(engine)
        # The index writer's connection, kept between its transactions (writing_connection
        # with reuse=True): a pool checkout, PostgreSQL's pre-ping round trip and the
        # connection's set-up cost more than the one-row transaction of a lone C-STORE.
        self._held: Connection | None = None
        self._held_lock = threading.Lock()

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries; rolled back at the end."""
        with self._reader() as session:
            yield session

    @contextmanager
    def reading_connection(self) -> Iterator[Connection]:
        """A connection for Core queries (no ORM session: a C-FIND's per-query cost);
        rolled back at the end."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends without an exception."""
        with self._write_lock, self._writer() as session, session.begin():
            yield session

    @contextmanager
    def writing_connection(self, reuse: bool = False) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends without error.

        Core only, no ORM session: the index writer's per-row cost (index/writer.py), which
        passes `reuse`: the one connection kept for that purpose, used by one thread at a
        time. A transaction that fails closes it (a dead or broken connection is not kept).
        """
        if not reuse:
            with (
                self._write_lock,
                self._write_engine.connect() as connection,
                _committed(connection),
            ):
                yield connection
            return
        with self._held_lock, self._write_lock:
            connection = self._held or self._write_engine.connect()
            self._held = None
            with _closed_on_error(connection), _committed(connection):
                yield connection
            self._held = connection

    def dispose(self) -> None:
        """Close every pooled connection (the writer's kept one too)."""
        with self._held_lock:
            if self._held is not None:
                self._held.close()
                self._held = None
        self.engine.dispose()


@contextmanager
def _committed(connection: Connection) -> Iterator[None]:
    transaction = connection.begin()
    try:
        yield
    except BaseException:
        transaction.rollback()
        raise
    try:
        transaction.commit()
    except Exception as exc:
        # The server may have committed before the connection failed: the caller must
        # not act as if the rows were absent (e.g. remove the files they point to).
        raise CommitInDoubt(f"commit outcome unknown: {exc!r}") from exc


@contextmanager
def _closed_on_error(connection: Connection) -> Iterator[None]:
    try:
        yield
    except BaseException:
        connection.close()
        raise
