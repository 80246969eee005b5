"""Caps on connections that have not associated yet (`network.max_pending_*`).

A connection is pending from accept() until its A-ASSOCIATE-RQ has been accepted or rejected,
or until it closes; the TLS handshake counts as pending too. A flood of sockets that never
associate could use up descriptors and memory, and one address could keep others from
associating. ARTIM (PS3.8 9.1.5, `network.acse_timeout`) closes idle ones eventually; these
caps decide at accept time, before anything is read: beyond either cap the new connection is
closed at once.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from pacsd.logs import get_logger

log = get_logger("pacsd.listener")

ConnectionKey = tuple[str, int, int]  # peer address, peer port, local port
WARNING_INTERVAL_S = 10.0  # at most one refusal warning per interval; the rest are counted


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
        self._pending: set[ConnectionKey] = set()
        self._per_address: Counter[str] = Counter()
        self._refusals = _Refusals()

    def admit(self, key: ConnectionKey) -> bool:
        """At accept: count the connection, or refuse it (False) beyond a cap (on the loop)."""
        address = key[0]
        if not self._full(address):
            self._pending.add(key)
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

    def release(self, key: ConnectionKey) -> None:
        """The connection associated, was rejected or closed (idempotent)."""
        if key in self._pending:
            self._pending.discard(key)
            self._per_address[key[0]] -= 1
            if self._per_address[key[0]] <= 0:
                del self._per_address[key[0]]

    def count(self) -> int:
        """Connections pending now."""
        return len(self._pending)

    @property
    def refused(self) -> int:
        """Connections refused since start."""
        return self._refusals.count
