"""The client handle: one per connection, alive while the association is.

Built when the connection opens, completed when the A-ASSOCIATE-RQ arrives and when negotiation
ends, handed to every service handler as one typed object, listed by the status interface, and
logged once when it closes. The engine's event loop writes it; services, which run in executor
threads, count their operations on it (hence the lock on the counters).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pacsd.dicom.sop_classes import sop_class_keyword
from pacsd.dimse.messages import NO_EXTENDED_OPTIONS, ExtendedOptions
from pacsd.logs import Logger, get_logger
from pacsd.policy.engine import Decision
from pacsd.policy.limits import Slot

# Association IDs: a random prefix per process (workers never share one) and a counter.
_ID_PREFIX = secrets.token_hex(3)
_counter = itertools.count(1)


def _next_id() -> str:
    return f"{_ID_PREFIX}{next(_counter) & 0xFFFFFF:06x}"


HandleState = Literal["connected", "requested", "established", "rejected", "released", "aborted"]


@dataclass(frozen=True)
class NegotiatedContext:
    """A presentation context after negotiation (PS3.8 9.3.3.2); roles are pacsd's own, and
    `extended` what SOP Class (Common) Extended Negotiation agreed for its SOP class."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    result: int  # 0 acceptance, 1 user rejection, 3 abstract / 4 transfer syntax not supported
    pacsd_scu: bool = False
    pacsd_scp: bool = False
    extended: ExtendedOptions = NO_EXTENDED_OPTIONS

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the SOP class keyword; `extended` only when something was agreed."""
        document = {
            "context_id": self.context_id,
            "abstract_syntax": self.abstract_syntax,
            "transfer_syntax": self.transfer_syntax,
            "result": self.result,
            "pacsd_scu": self.pacsd_scu,
            "pacsd_scp": self.pacsd_scp,
            "sop_class": sop_class_keyword(self.abstract_syntax),
        }
        if self.extended != NO_EXTENDED_OPTIONS:
            document["extended"] = extended_as_dict(self.extended)
        return document


def extended_as_dict(options: ExtendedOptions) -> dict[str, Any]:
    """The agreed options, JSON-ready: the flags that are set, the reply in hexadecimal."""
    document: dict[str, Any] = {
        name: value for name, value in asdict(options).items() if value and name != "reply"
    }
    if options.reply is not None:
        document["reply"] = options.reply.hex()
    return document


@dataclass
class ServiceCounters:
    """Operations of one DIMSE service on the association."""

    invoked: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class Counters:
    """What happened on the association so far."""

    services: dict[str, ServiceCounters] = field(default_factory=dict)
    instances_stored: int = 0
    dataset_bytes_stored: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0

    @property
    def operations(self) -> int:
        """Operations completed, all services together."""
        return sum(c.completed for c in self.services.values())

    @property
    def failures(self) -> int:
        """Operations that ended with a failure status."""
        return sum(c.failed for c in self.services.values())


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
    peer_implementation_class_uid: str = ""
    peer_implementation_version_name: str = ""
    username: str | None = None  # the verified user name (policy/identity.py)
    # User identity negotiation (PS3.7 D.3.3.7): the type the peer sent (1 username,
    # 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT), None when it sent none; whether
    # pacsd verified it (None: not checked, e.g. the rule does not accept identities).
    user_identity_type: int | None = None
    user_verified: bool | None = None
    tls_subject: str | None = None  # the verified client certificate's subject (RFC 4514)
    tls_version: str | None = None  # e.g. "TLSv1.3"; None on the plain listener
    peer_max_pdu_size: int | None = None  # what the peer receives (0: unlimited)
    local_max_pdu_size: int | None = None  # what pacsd offered to receive
    # The A-ASSOCIATE-AC user identity Server-response to send (PS3.7 D.3.3.7.2), if any.
    identity_response: bytes | None = None
    decision: Decision | None = None
    slot: Slot | None = None
    contexts: list[NegotiatedContext] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    _log: Logger | None = field(default=None, init=False)
    _started: float = field(default_factory=time.monotonic, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def log(self) -> Logger:
        """This association's logger: its ID, AE titles and peer on every line."""
        if self._log is None:
            self._log = get_logger("pacsd.association", **self.log_context())
        return self._log

    @classmethod
    def connect(cls, peer_address: str, peer_port: int) -> ClientHandle:
        """A handle for a new connection from `peer_address`."""
        return cls(_next_id(), peer_address, peer_port, datetime.now(UTC))

    def log_context(self) -> dict[str, Any]:
        """The keys every log line of this association carries."""
        return {
            "association_id": self.association_id,
            "calling_ae_title": self.calling_ae_title,
            "called_ae_title": self.called_ae_title,
            "peer": f"{self.peer_address}:{self.peer_port}",
        }

    def requested(self, calling_ae_title: str, called_ae_title: str) -> None:
        """Record the A-ASSOCIATE-RQ's AE titles (and put them in the log context)."""
        self.calling_ae_title = calling_ae_title
        self.called_ae_title = called_ae_title
        self.state = "requested"
        self._log = None  # the next line carries the titles

    @property
    def accepted_contexts(self) -> list[NegotiatedContext]:
        """The contexts the peer may use."""
        return [cx for cx in self.contexts if cx.result == 0]

    def operation_started(self, service: str) -> None:
        """Count a DIMSE request as invoked."""
        with self._lock:
            self.counters.services.setdefault(service, ServiceCounters()).invoked += 1

    def operation_finished(
        self, service: str, failed: bool, stored: bool = False, size: int = 0
    ) -> None:
        """Count a DIMSE request as completed, with its outcome (`size`: data set bytes)."""
        with self._lock:
            counters = self.counters.services.setdefault(service, ServiceCounters())
            counters.completed += 1
            counters.failed += int(failed)
            self.counters.instances_stored += int(stored)
            self.counters.dataset_bytes_stored += size if stored else 0

    def data_received(self, size: int) -> None:
        """Count bytes read from the peer (whole PDUs)."""
        with self._lock:
            self.counters.bytes_received += size

    def data_sent(self, size: int) -> None:
        """Count bytes written to the peer (whole PDUs)."""
        with self._lock:
            self.counters.bytes_sent += size

    @property
    def duration_s(self) -> float:
        """Seconds since the connection opened."""
        return time.monotonic() - self._started

    def snapshot(self) -> dict[str, Any]:
        """Everything an operator may want to see, JSON-ready."""
        decision = self.decision
        with self._lock:
            services = {name: asdict(c) for name, c in self.counters.services.items()}
            counters = {
                "services": services,
                "instances_stored": self.counters.instances_stored,
                "dataset_bytes_stored": self.counters.dataset_bytes_stored,
                "bytes_received": self.counters.bytes_received,
                "bytes_sent": self.counters.bytes_sent,
            }
        return {
            "association_id": self.association_id,
            "state": self.state,
            "peer_address": self.peer_address,
            "peer_port": self.peer_port,
            "calling_ae_title": self.calling_ae_title,
            "called_ae_title": self.called_ae_title,
            "connected_at": self.connected_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "peer_implementation_class_uid": self.peer_implementation_class_uid,
            "peer_implementation_version_name": self.peer_implementation_version_name,
            "username": self.username,
            "user_identity_type": self.user_identity_type,
            "user_verified": self.user_verified,
            "tls_version": self.tls_version,
            "tls_subject": self.tls_subject,
            "peer_max_pdu_size": self.peer_max_pdu_size,
            "local_max_pdu_size": self.local_max_pdu_size,
            "rule": decision.rule if decision else None,
            "accepted_contexts": [cx.as_dict() for cx in self.accepted_contexts],
            "rejected_contexts": [cx.as_dict() for cx in self.contexts if cx.result != 0],
            "counters": counters,
        }
