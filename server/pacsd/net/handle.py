"""The client handle: one per connection, alive while the association is.

Built when the connection opens, completed when the A-ASSOCIATE-RQ arrives and when negotiation
ends, handed to every service handler as one typed object, and logged once when it closes.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from pacsd.logs import ThreadContext, get_logger
from pacsd.policy.engine import Decision

HandleState = Literal["connected", "requested", "established", "rejected", "released", "aborted"]


@dataclass(frozen=True)
class AcceptedContext:
    """A negotiated presentation context (PS3.8 9.3.3.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    scu_role: bool
    scp_role: bool


@dataclass
class Counters:
    """What happened on the association so far."""

    operations: int = 0
    failures: int = 0
    instances_stored: int = 0
    bytes_received: int = 0


@dataclass
class ClientHandle:
    """One peer connection and, once requested, its association."""

    association_id: str
    peer_address: str
    peer_port: int
    connected_at: datetime
    calling_ae_title: str = ""
    called_ae_title: str = ""
    state: HandleState = "connected"
    decision: Decision | None = None
    accepted_contexts: list[AcceptedContext] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    log: structlog.stdlib.BoundLogger = field(init=False)
    _started: float = field(default_factory=time.monotonic, init=False)
    _thread_ids: tuple[int | None, ...] = field(default=(), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.log = get_logger("pacsd.association", **self.log_context())

    @classmethod
    def connect(cls, peer_address: str, peer_port: int) -> ClientHandle:
        """A handle for a new connection from `peer_address`."""
        return cls(secrets.token_hex(6), peer_address, peer_port, datetime.now(UTC))

    def log_context(self) -> dict[str, Any]:
        """The keys every log line of this association carries."""
        return {
            "association_id": self.association_id,
            "calling_ae_title": self.calling_ae_title,
            "called_ae_title": self.called_ae_title,
            "peer": f"{self.peer_address}:{self.peer_port}",
        }

    def requested(
        self, calling_ae_title: str, called_ae_title: str, thread_ids: tuple[int | None, ...]
    ) -> None:
        """Record the A-ASSOCIATE-RQ's AE titles; bind the log context to pynetdicom's threads."""
        self.calling_ae_title = calling_ae_title
        self.called_ae_title = called_ae_title
        self.state = "requested"
        self.log = get_logger("pacsd.association", **self.log_context())
        self._thread_ids = thread_ids
        ThreadContext.bind(thread_ids, self.log_context())

    def record_operation(self, failed: bool, stored: bool = False, size: int = 0) -> None:
        """Count one DIMSE operation."""
        with self._lock:
            self.counters.operations += 1
            self.counters.failures += int(failed)
            self.counters.instances_stored += int(stored)
            self.counters.bytes_received += size

    @property
    def duration_s(self) -> float:
        """Seconds since the connection opened."""
        return time.monotonic() - self._started

    def close(self) -> None:
        """Forget the thread bindings; the handle stays readable for its final log line."""
        ThreadContext.unbind(self._thread_ids)


class HandleRegistry:
    """The live client handles of this process, keyed by their association object."""

    def __init__(self) -> None:
        self._handles: dict[object, ClientHandle] = {}
        self._lock = threading.Lock()

    def open(self, key: object, peer_address: str, peer_port: int) -> ClientHandle:
        """Register a handle for a new connection."""
        handle = ClientHandle.connect(peer_address, peer_port)
        with self._lock:
            self._handles[key] = handle
        return handle

    def get(self, key: object) -> ClientHandle:
        """The handle of `key`; a connection pacsd missed opening gets one now."""
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = self._handles[key] = ClientHandle.connect("unknown", 0)
            return handle

    def close(self, key: object) -> ClientHandle | None:
        """Remove and return the handle of `key`."""
        with self._lock:
            handle = self._handles.pop(key, None)
        if handle is not None:
            handle.close()
        return handle
