"""Several pacsd nodes on one PostgreSQL archive: claims, archive-wide locks, the node registry.

Everything one-per-archive is coordinated by PostgreSQL itself, never by a protocol between
nodes:
- Queued work (commitment_request, ups_event_report) is claimed by one node with
  `SELECT ... FOR UPDATE SKIP LOCKED`: `claimed_by` names the node, `claimed_until` ends the
  claim unless the node's heartbeat renews it. A node that died stops renewing; after `lease`
  seconds its items are anybody's. Times are the database server's (`now()`), so the nodes'
  clocks need not agree.
- A task that must run on one node at a time (`pacsd fsck --repair`, retention) holds a
  session advisory lock (`archive_lock`); PostgreSQL drops it with the connection of a
  process that died.
- Each node's leading process keeps its row in `cluster_node` fresh (`beat`), with the node's
  open associations as of that beat; a row silent for 3 heartbeats is a dead node. Every
  node's /metrics reads the registry at scrape time (`list_nodes`, http/app.py).

With SQLite (one node only) `archive_lock` is a no-op and no claim is ever made: the queues
take the single-node path of index/commitment.py and index/ups.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, create_engine, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.pool import NullPool

from pacsd.index.database import IndexDatabase
from pacsd.index.models import ClusterNode, CommitmentRequest, UpsEventReport

if TYPE_CHECKING:
    from pacsd.settings import ClusterSettings

DEAD_AFTER_HEARTBEATS = 3
_CONNECT_ARGS = {"connect_timeout": 10}  # as index/database.py's engine
_QUEUES = (CommitmentRequest, UpsEventReport)


class ArchiveBusy(Exception):
    """Another process (on this node or another) holds the archive-wide lock of that task."""


@dataclass(frozen=True)
class Claim:
    """How this node claims queued items: its name, and how long a claim lasts unrenewed."""

    node: str
    lease: float

    @classmethod
    def for_settings(cls, cluster: ClusterSettings) -> Claim | None:
        """This node's claim in cluster mode; None for a single node (no claims at all)."""
        return cls(cluster.name, cluster.lease) if cluster.enabled else None

    def until(self) -> ColumnElement[datetime]:
        """The end of a claim made or renewed now, in the database server's time."""
        return func.now() + timedelta(seconds=self.lease)

    def claimable(
        self, by: InstrumentedAttribute[str | None], until: InstrumentedAttribute[datetime | None]
    ) -> ColumnElement[bool]:
        """Rows nobody holds, held by this node, or whose holder let its claim lapse."""
        return or_(by.is_(None), by == self.node, until < func.now())

    def held_elsewhere(self, by: str | None, until: datetime | None, now: datetime) -> bool:
        """Does another node hold this claim (read with the database's `now`)?"""
        return by is not None and by != self.node and until is not None and until >= now


def advisory_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks, the same on every node."""
    digest = hashlib.sha256(f"pacsd:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def archive_lock(database: IndexDatabase, name: str, pooled: bool = False) -> Iterator[None]:
    """Hold the archive-wide lock `name` (pg_try_advisory_lock) for the block; ArchiveBusy at
    once when another process holds it. A no-op on SQLite, whose archive has one node.

    The lock's connection is one of its own, outside the pool (the block may need every pooled
    one: `pacsd fsck` opens a pool of one); `pooled`: one of the pool's, for a lock taken often.
    """
    if database.backend != "postgresql":
        yield
        return
    engine = database.engine
    if not pooled:
        engine = create_engine(engine.url, poolclass=NullPool, connect_args=_CONNECT_ARGS)
    try:
        with engine.connect() as connection, _session_lock(connection, name):
            yield
    finally:
        if not pooled:
            engine.dispose()


@contextmanager
def _session_lock(connection: Connection, name: str) -> Iterator[None]:
    # Session level: held across the block's transactions on other connections, released
    # here or when the connection ends with its process.
    key = advisory_key(name)
    taken = connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
    connection.commit()
    if not taken:
        raise ArchiveBusy(f"{name} is running elsewhere on this archive")
    try:
        yield
    finally:
        connection.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.commit()


def try_transaction_lock(session: Session, name: str) -> bool:
    """Take the advisory lock `name` until the session's transaction ends, if free."""
    taken = session.scalar(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": advisory_key(name)}
    )
    return bool(taken)


def database_now(session: Session) -> datetime:
    """The database server's current time (that of the transaction)."""
    moment = session.scalar(select(func.now()))
    if not isinstance(moment, datetime):
        raise TypeError(f"now() gave {moment!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def release_claims(database: IndexDatabase, node: str) -> int:
    """Let go of every item `node` holds (clean stop, or start-up after a crash); how many."""
    released = 0
    with database.writing() as session:
        for queue in _QUEUES:
            result = session.execute(
                update(queue)
                .where(queue.claimed_by == node)
                .values(claimed_by=None, claimed_until=None)
            )
            released += int(getattr(result, "rowcount", 0) or 0)
    return released


@dataclass(frozen=True)
class NodeAddress:
    """Where a node answers: its DICOM listener (host:port) and HTTP interface ("" if none)."""

    dicom_address: str
    http_url: str


def beat(
    database: IndexDatabase,
    claim: Claim,
    address: NodeAddress,
    started: dict[str, Any],
    associations: int | None = None,
) -> None:
    """One heartbeat: the node's row says it lives, and its claims last `lease` from now.

    `started`: pid, version, heartbeat and started_at, written when the row is (re)created;
    `associations`: the node's open associations now (None: not known).
    """
    now = func.now()
    values = {"name": claim.node, **started, "last_seen": now, "stopped_at": None}
    values["associations"] = associations
    values |= {"http_url": address.http_url, "dicom_address": address.dicom_address}
    statement = insert(ClusterNode).values(**values)
    refreshed = {key: statement.excluded[key] for key in values if key != "name"}
    with database.writing() as session:
        session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=refreshed))
        for queue in _QUEUES:
            session.execute(
                update(queue)
                .where(queue.claimed_by == claim.node)
                .values(claimed_until=claim.until())
            )


def node_stopped(database: IndexDatabase, node: str) -> None:
    """A clean stop: the node's row says so and its claims go back to the queues. Its
    associations have ended (the engine drained or aborted them before): 0."""
    release_claims(database, node)
    with database.writing() as session:
        session.execute(
            update(ClusterNode)
            .where(ClusterNode.name == node)
            .values(stopped_at=func.now(), associations=0)
        )


@dataclass(frozen=True)
class NodeRow:
    """A node as `pacsd nodes` shows it; `state`: live, dead (silent for 3 heartbeats) or
    stopped (it said so when it stopped); `associations`: its open associations as of
    `last_seen` (None: not known, the node keeps no metrics)."""

    name: str
    state: str
    pid: int
    version: str
    started_at: str
    last_seen: str
    seconds_since_seen: float
    dicom_address: str
    http_url: str
    associations: int | None


def list_nodes(database: IndexDatabase) -> list[NodeRow]:
    """Every node that ever registered, by name."""
    with database.reading() as session:
        now = database_now(session)
        rows = list(session.scalars(select(ClusterNode).order_by(ClusterNode.name)))
    listed = []
    for row in rows:
        silent = (now - _aware(row.last_seen)).total_seconds()
        if row.stopped_at is not None:
            state = "stopped"
        elif silent > DEAD_AFTER_HEARTBEATS * row.heartbeat:
            state = "dead"
        else:
            state = "live"
        listed.append(
            NodeRow(
                row.name,
                state,
                row.pid,
                row.version,
                _aware(row.started_at).isoformat(timespec="seconds"),
                _aware(row.last_seen).isoformat(timespec="seconds"),
                round(max(0.0, silent), 1),
                row.dicom_address,
                row.http_url,
                row.associations,
            )
        )
    return listed


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
