"""What a streaming service asks of the association it answers on (the engine implements it).

C-FIND, C-GET and C-MOVE run in an executor thread, away from the engine's event loop; they
talk back through an `OperationPort`: pending responses, the C-STORE sub-operations of a C-GET
on the same association, and, for a C-MOVE, a new association to the destination. Each call
blocks its thread, never the loop, and waits when the peer reads slower than pacsd sends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pydicom.dataset import Dataset

from pacsd.settings import Peer


@dataclass(frozen=True)
class SubOperationCounts:
    """The sub-operation counts of a C-GET/C-MOVE response (PS3.7 9.3.3.2, 9.3.4.2)."""

    remaining: int
    completed: int
    failed: int
    warning: int


# Outgoing.offset of a local Part 10 file pacsd stored: its data set begins after the file
# meta group, which the engine reads when it opens the file to send it (no earlier open).
AFTER_FILE_META = -1


def unreadable_reason(exc: BaseException) -> str:
    """A C-STORE sub-operation's failure reason for a stored file that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "stored file missing"
    return f"stored file unreadable: {type(exc).__name__}"


@dataclass(frozen=True)
class Outgoing:
    """A stored instance to send in a C-STORE sub-operation, in `transfer_syntax`: the stored
    data set as it is, bytes [`offset`:] of a local file (`path`; or AFTER_FILE_META) or of
    an object store's reader (`stream`, `size` bytes long, read by the engine in an executor
    thread and closed by the caller once `send_c_store` returned), or a transcoded one
    (`data`)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path | None = None
    offset: int = 0
    data: bytes | None = None
    stream: BinaryIO | None = None
    size: int = 0


class SubOperationError(Exception):
    """A C-STORE sub-operation got no response (the association ended, a timeout)."""


class StoreSender(Protocol):
    """An association pacsd sends C-STOREs on (the C-GET's own, or a C-MOVE's new one)."""

    def accepted_syntaxes(self, sop_class_uid: str) -> list[str]:
        """The transfer syntaxes of the contexts where pacsd may send this SOP class."""
        ...

    def send_c_store(self, outgoing: Outgoing) -> int:
        """Send one instance; the status of the C-STORE-RSP (SubOperationError: none came)."""
        ...

    def send_c_stores(
        self,
        batch: Sequence[Outgoing],
        on_result: Callable[[int, int | str], SubOperationCounts],
        cancelled: Callable[[], bool],
    ) -> int:
        """Send `batch` in order, each once the previous one's response came, without a
        round trip to this thread in between. After each one the engine calls `on_result(index,
        the response's status, or why none came)` on its own side (it must be quick and never
        block) and sends the Pending response with the counts it returns. Stops before the
        next one once `cancelled()`; returns how many were sent."""
        ...


class OperationPort(Protocol):
    """The association a streaming operation answers on."""

    def pending(
        self,
        status: int,
        identifier: Dataset | bytes | None = None,
        counts: SubOperationCounts | None = None,
        hold: bool = False,
    ) -> None:
        """Send a pending response (PS3.7 9.1.2.1.6); `identifier` as bytes is already
        encoded in the request's transfer syntax.

        With `hold`, the engine may keep it and hand it to the wire with the next ones: at
        the latest on `flush()`, with a response that is not held, or with the final response
        (in one write). A caller holds only while it produces responses back to back, and
        flushes before anything slow (reading the next batch of matches).
        """
        ...

    def flush(self) -> None:
        """Hand the held pending responses to the wire now."""
        ...

    @property
    def same_association(self) -> StoreSender:
        """The requester's own association, for C-GET's sub-operations."""
        ...

    def sub_association(
        self, peer: Peer, contexts: Sequence[tuple[str, Sequence[str]]]
    ) -> AbstractContextManager[StoreSender]:
        """A new association to `peer` proposing `contexts` (abstract syntax, transfer
        syntaxes), released at the end; MoveDestinationUnknown when it cannot be made."""
        ...
