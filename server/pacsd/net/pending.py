"""Caps on connections that have not associated yet (`network.max_pending_*`).

A connection is pending from accept() until its A-ASSOCIATE-RQ has been accepted or rejected,
or until it closes; the TLS handshake counts as pending too. Each pending connection holds a
thread (pynetdicom runs two per connection, PYNETDICOM_NOTES.md), so a flood of sockets that
never associate could use up threads and descriptors. ARTIM (PS3.8 9.1.5, `network.acse_timeout`)
closes idle ones eventually; these caps decide at accept time, on the accept thread, before any
thread is started: beyond either cap the new connection is closed at once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacsd.logs import get_logger

log = get_logger("pacsd.listener")

ConnectionKey = tuple[str, int, int]  # peer address, peer port, local port
WARNING_INTERVAL_S = 10.0  # at most one refusal warning per interval; the rest are counted


def key_of(assoc: Association) -> ConnectionKey:
    """The key of an accepted association's connection."""
    return (
        str(assoc.requestor.address),
        int(assoc.requestor.port or 0),
        int(assoc.acceptor.port or 0),
    )


@dataclass
class _Pending:
    association: weakref.ReferenceType[Association] | None = None

    def ended(self) -> bool:
        """The association thread has finished (its close event was missed)."""
        if self.association is None:
            return False
        assoc = self.association()
        return assoc is None or (assoc.ident is not None and not assoc.is_alive())


@dataclass
class _Refusals:
    """Counts refusals and says when the next warning line is due."""

    count: int = 0
    since_warning: int = 0
    last_warning: float = field(default=-WARNING_INTERVAL_S)

    def due(self) -> int:
        """Count one refusal; the number to report when a warning is due now, else 0."""
        self.count += 1
        self.since_warning += 1
        now = time.monotonic()
        if now - self.last_warning < WARNING_INTERVAL_S:
            return 0
        reported, self.since_warning, self.last_warning = self.since_warning, 0, now
        return reported


class PendingConnections:
    """Connections accepted but not yet associated, in all and per source address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._pending: dict[ConnectionKey, _Pending] = {}
        self._per_address: Counter[str] = Counter()
        self._refusals = _Refusals()

    def admit(self, key: ConnectionKey) -> bool:
        """On the accept thread: count the connection, or refuse it (False) beyond a cap."""
        address = key[0]
        with self._lock:
            if self._full(address):
                self._forget_ended()
            if not self._full(address):
                self._pending[key] = _Pending()
                self._per_address[address] += 1
                return True
            total, from_address = len(self._pending), self._per_address[address]
            reported = self._refusals.due()
        if reported:
            log.warning(
                "connection closed: too many connections not yet associated",
                peer_address=address,
                pending=total,
                pending_from_address=from_address,
                max_pending_connections=self.max_total,
                max_pending_per_address=self.max_per_address,
                refused=reported,
            )
        return False

    def _full(self, address: str) -> bool:
        return (
            len(self._pending) >= self.max_total
            or self._per_address[address] >= self.max_per_address
        )

    def _forget_ended(self) -> None:
        for key in [key for key, entry in self._pending.items() if entry.ended()]:
            self._drop(key)

    def release(self, key: ConnectionKey) -> None:
        """The connection associated, was rejected or closed (idempotent)."""
        with self._lock:
            self._drop(key)

    def _drop(self, key: ConnectionKey) -> None:
        if self._pending.pop(key, None) is not None:
            self._per_address[key[0]] -= 1
            if self._per_address[key[0]] <= 0:
                del self._per_address[key[0]]

    def count(self) -> int:
        """Connections pending now."""
        with self._lock:
            return len(self._pending)

    @property
    def refused(self) -> int:
        """Connections refused since start."""
        return self._refusals.count

    def on_connection_open(self, event: Event) -> None:
        """EVT_CONN_OPEN: remember the association, to notice if its close event is missed."""
        with self._lock:
            entry = self._pending.get(key_of(event.assoc))
            if entry is not None:
                entry.association = weakref.ref(event.assoc)

    def on_settled(self, event: Event) -> None:
        """EVT_ACCEPTED, EVT_REJECTED, EVT_CONN_CLOSE: no longer pending."""
        self.release(key_of(event.assoc))

    def handlers(self) -> list[tuple[Any, Any]]:
        """The event handlers that end a connection's pending time."""
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_ACCEPTED, self.on_settled),
            (evt.EVT_REJECTED, self.on_settled),
            (evt.EVT_CONN_CLOSE, self.on_settled),
        ]
