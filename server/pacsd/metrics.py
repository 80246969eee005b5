"""What pacsd counts for its Prometheus metrics, at the few places where things happen.

The engine (an association established, rejected, ended), the guard (each DIMSE operation's
status and duration) and the index writer (each group commit) call the functions here. They
hand the event to the process's sink. The Prometheus one (pacsd.http.metrics) is installed
once the DICOM listeners accept, so that importing prometheus_client never delays the first
C-ECHO; until then an `EarlySink` keeps the events and hands them over. Without an HTTP
interface the sink counts nothing. Nothing here imports a third-party library, and each call
costs a function call or two on the hot paths (thousands of C-STOREs and associations a
second).
"""

from __future__ import annotations

from typing import Any

# PS3.8 9.3.4, Table 9-21: A-ASSOCIATE-RJ result, source and reason/diagnostic, as labels.
RESULT_NAMES = {1: "permanent", 2: "transient"}
SOURCE_NAMES = {1: "service-user", 2: "service-provider-acse", 3: "service-provider-presentation"}
REASON_NAMES = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-ae-title-not-recognized",
    (1, 7): "called-ae-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def rejection_labels(result: int, source: int, reason: int) -> tuple[str, str, str]:
    """The (result, source, reason) label values of an A-ASSOCIATE-RJ (PS3.8 Table 9-21);
    a code the table reserves keeps its number."""
    return (
        RESULT_NAMES.get(result, str(result)),
        SOURCE_NAMES.get(source, str(source)),
        REASON_NAMES.get((source, reason), str(reason)),
    )


class Sink:
    """Where the counting points report; this one counts nothing (no metrics installed)."""

    def association_established(self) -> None:
        """An A-ASSOCIATE-AC was sent."""

    def association_rejected(self, result: int, source: int, reason: int) -> None:
        """An A-ASSOCIATE-RJ was sent with these codes."""

    def connection_ended(self, established: bool, received: int, sent: int) -> None:
        """A DICOM connection closed (`established`: an accepted association that was open),
        having received and sent these many bytes."""

    def operation_finished(self, operation: str, status: int, seconds: float) -> None:
        """A DIMSE operation was answered with `status` after `seconds`."""

    def index_batch_written(self, size: int) -> None:
        """The index writer committed a batch of `size` instance rows."""

    def open_associations(self) -> int | None:
        """The node's open associations, every worker's (None: not counted here)."""
        return None


class EarlySink(Sink):
    """The events of the first moments, kept until the Prometheus sink takes them over."""

    MAX_EVENTS = 10_000  # start-up takes a fraction of a second: more means none came

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def _keep(self, name: str, *args: Any) -> None:
        if len(self.events) < self.MAX_EVENTS:
            self.events.append((name, args))  # list.append: safe from any thread

    def association_established(self) -> None:
        self._keep("association_established")

    def association_rejected(self, result: int, source: int, reason: int) -> None:
        self._keep("association_rejected", result, source, reason)

    def connection_ended(self, established: bool, received: int, sent: int) -> None:
        self._keep("connection_ended", established, received, sent)

    def operation_finished(self, operation: str, status: int, seconds: float) -> None:
        self._keep("operation_finished", operation, status, seconds)

    def index_batch_written(self, size: int) -> None:
        self._keep("index_batch_written", size)

    def hand_over(self, sink: Sink) -> None:
        """Report every kept event to `sink`."""
        for name, args in self.events:
            getattr(sink, name)(*args)
        self.events.clear()


_sink = Sink()


def use(sink: Sink) -> None:
    """Report to `sink` from now on; what an EarlySink in place kept goes to it first."""
    global _sink
    previous, _sink = _sink, sink
    if isinstance(previous, EarlySink):
        previous.hand_over(sink)


def association_established() -> None:
    """Count an accepted association (engine/acceptor.py)."""
    _sink.association_established()


def association_rejected(result: int, source: int, reason: int) -> None:
    """Count a rejected association by its A-ASSOCIATE-RJ codes (engine/acceptor.py)."""
    _sink.association_rejected(result, source, reason)


def connection_ended(established: bool, received: int, sent: int) -> None:
    """Count a closed connection's bytes (engine/acceptor.py, engine/requestor.py)."""
    _sink.connection_ended(established, received, sent)


def operation_finished(operation: str, status: int, seconds: float) -> None:
    """Count a DIMSE operation by name and status (services/guard.py)."""
    _sink.operation_finished(operation, status, seconds)


def index_batch_written(size: int) -> None:
    """Count a group commit of the index writer (index/writer.py)."""
    _sink.index_batch_written(size)


def open_associations() -> int | None:
    """The node's open associations as its metrics count them (pacsd.cluster's heartbeat);
    None until the Prometheus sink is installed, or without one (no HTTP interface)."""
    return _sink.open_associations()
