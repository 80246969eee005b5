"""User Authentication of quiet associations, aggregated per peer and interval (PS3.15 A.5.3.13).

Every accepted association is a login of the calling node and its end a logout (events.py).
Most associations of a busy archive are quiet: a C-ECHO, a monitoring probe, a storage that
failed before anything was kept. Writing two messages for each cost about as much CPU as the
rest of such an association. So an association gets its own Login and Logout only once
something else of it is audited (a stored study, a query, a retrieval, a refused request):
the Login is then written just before that first message, the Logout when it ends, in the
order they had before. A quiet association is counted instead, per peer (calling and called AE
title, address, user and TLS identity) and end state, and each count becomes one Login and
one Logout message, naming how many associations and the time span, at most SESSION_INTERVAL_S
after the first one counted, and at shutdown. As with the aggregated C-STORE messages
(transfers.py, IHE ITI-20 allows it), every login still appears in the trail; only the
association IDs of quiet ones are not listed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pacsd.handle import ClientHandle

SESSION_INTERVAL_S = 60.0


class Pending(Protocol):
    """A flush to come (an event loop's TimerHandle, a threading.Timer)."""

    def cancel(self) -> None:
        """Do not run it."""
        ...


CallLater = Callable[[float, Callable[[], None]], Pending]


class LoopTimers(Protocol):
    """What SessionAggregates needs of an event loop."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Pending:
        """Run `callback` in `delay` seconds."""
        ...


@dataclass(frozen=True)
class PeerKey:
    """Who logged in and how it ended: what one aggregated Login/Logout pair is about."""

    calling_ae_title: str | None
    called_ae_title: str | None
    peer_address: str
    username: str | None
    user_identity_type: int | None
    user_verified: bool | None
    tls: tuple[str | None, str | None]
    state: str

    @classmethod
    def of(cls, handle: ClientHandle) -> PeerKey:
        """The key of `handle`'s ended association."""
        return cls(
            handle.calling_ae_title,
            handle.called_ae_title,
            handle.peer_address,
            handle.username,
            handle.user_identity_type,
            handle.user_verified,
            (handle.tls_version, handle.tls_subject),
            handle.state,
        )


@dataclass
class QuietSessions:
    """How many quiet associations of one peer ended, from `first` to `last` (UTC)."""

    handle: ClientHandle  # the first one: its AE titles, address and user name the peer
    count: int
    first: datetime
    last: datetime


class SessionAggregates:
    """Quiet associations per peer until the next flush (thread-safe).

    `flush` is called SESSION_INTERVAL_S after the first association counted, by `call_later`
    (the daemon's event loop, where associations end: no thread) or else a threading.Timer,
    started only while something is counted; `take_all` takes the rest at shutdown.
    """

    def __init__(self, flush: Callable[[], None], interval_s: float = SESSION_INTERVAL_S):
        self._flush = flush
        self._interval_s = interval_s
        self._by_peer: dict[PeerKey, QuietSessions] = {}
        self._timer: Pending | None = None
        self._lock = threading.Lock()
        # Set by the daemon while its loop runs; called from the thread that calls `add`.
        self.call_later: CallLater | None = None

    def add(self, handle: ClientHandle) -> None:
        """Count `handle`'s association, which ended without any other audit message."""
        key = PeerKey.of(handle)
        now = datetime.now(UTC)
        with self._lock:
            sessions = self._by_peer.get(key)
            if sessions is None:
                self._by_peer[key] = QuietSessions(handle, 1, now, now)
            else:
                sessions.count += 1
                sessions.last = now
            if self._timer is None:
                self._timer = self._schedule()

    def _schedule(self) -> Pending:
        if self.call_later is not None:
            return self.call_later(self._interval_s, self._flush)
        timer = threading.Timer(self._interval_s, self._flush)
        timer.name = "pacsd-audit-sessions"
        timer.daemon = True
        timer.start()
        return timer

    def take_all(self) -> Iterator[QuietSessions]:
        """Every peer's count, forgotten here (and the pending timer cancelled)."""
        with self._lock:
            entries, self._by_peer = list(self._by_peer.values()), {}
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        yield from entries
