"""Query/Retrieve - GET and MOVE (PS3.4 C.4.2, C.4.3): stored instances sent as C-STOREs.

The handler yields one `Outgoing` per selected instance, a Dataset holding only the instance's
UIDs and where its file is. pacsd's sender (installed on the C-GET association and on every
association pacsd opens, so on C-MOVE sub-associations) turns it into what goes on the wire:
the stored file streamed untouched when the receiver accepted its transfer syntax
(pynetdicom's chunked send: no decode, no whole copy in memory), else a transcoded data set
(dicom/transcode), else a failed sub-operation that pynetdicom counts and lists in the Failed
SOP Instance UID List. pynetdicom sends the pending responses with the counts and the final
status (0x0000, 0xB000 with the failed list, 0xA702 when all failed, 0xFE00 on C-CANCEL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import code_to_category

from pacsd.dicom.qr_models import level_of, model_of, retrieve_keys
from pacsd.dicom.transcode import TranscodeError, choose_transfer_syntax, transcoded_dataset
from pacsd.errors import DicomStatusError, OutOfResources
from pacsd.index.database import IndexDatabase
from pacsd.index.retrieve import Selection, StoredInstance, select_instances, stored_instances
from pacsd.net.handle import ClientHandle
from pacsd.net.reactor import Checkpoint
from pacsd.net.tls import tls_args_for
from pacsd.services.guard import MOVE_DESTINATION_UNKNOWN, StreamReport
from pacsd.services.query import CANCELLED, PENDING, decoded_identifier
from pacsd.settings import Peer
from pacsd.storage.filesystem import FilesystemStore

# PS3.7 C.4.2.1.5 / C.4.3.1.5: the counts in the responses are US, so at most 65535 per request.
MAX_SUBOPERATIONS = 65535
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1-255
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class MoveDestinationUnknown(DicomStatusError):
    """PS3.4 C.4.2.1.5: Refused: Move Destination unknown (0xA801)."""

    status = MOVE_DESTINATION_UNKNOWN


@dataclass
class SubOperations:
    """The outcome of each C-STORE sub-operation, as pacsd's sender saw it (for the log)."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def record(self, status: Any) -> None:
        """Count one sub-operation from the C-STORE response (an empty one is a failure)."""
        code = getattr(status, "Status", None)
        category = code_to_category(int(code)) if code is not None else "Failure"
        if category == "Success":
            self.completed += 1
        elif category == "Warning":
            self.warning += 1
        else:
            self.fail(f"peer answered 0x{int(code):04X}" if code is not None else "no response")

    def fail(self, reason: str) -> None:
        """Count one failed sub-operation and why."""
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def final_status(self, total: int) -> int:
        """The final status pynetdicom sends for these outcomes (PS3.4 C.4.2.1.5)."""
        if not self.failed and not self.warning:
            return 0x0000
        return 0xA702 if self.failed == total else 0xB000

    def fields(self) -> dict[str, Any]:
        """Log fields."""
        fields: dict[str, Any] = {
            "completed": self.completed,
            "warnings": self.warning,
            "failures": self.failed,
        }
        if self.reasons:
            fields["failure_reasons"] = dict(self.reasons)
        return fields


class Outgoing(Dataset):
    """A stored instance on its way to a C-STORE sub-operation (see the module docstring)."""

    def __init__(self, instance: StoredInstance, path: Path, tally: SubOperations) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.stored = instance
        self.path = path
        self.tally = tally


SendCStore = Callable[..., Dataset]


def install_sender(assoc: Association) -> None:
    """Make `assoc.send_c_store` send `Outgoing` instances (once per association)."""
    original: SendCStore = assoc.send_c_store
    if getattr(original, "pacsd_sender", False):
        return

    def send_paused(payload: Any, *args: Any, **kwargs: Any) -> Dataset:
        pause_reactor(assoc)
        try:
            return original(payload, *args, **kwargs)
        except BaseException:
            assoc._reactor_checkpoint.set()  # never leave the reactor stopped
            raise

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if not isinstance(dataset, Outgoing):
            return send_paused(dataset, *args, **kwargs)
        try:
            status = send_paused(_payload(assoc, dataset), *args, **kwargs)
        except Exception as exc:
            dataset.tally.fail(_reason(exc))
            raise  # pynetdicom counts the failure and lists the SOP Instance UID
        dataset.tally.record(status)
        return status

    send_c_store.pacsd_sender = True  # type: ignore[attr-defined]
    assoc.send_c_store = send_c_store  # type: ignore[method-assign]


def pause_reactor(assoc: Association, timeout: float = 5.0) -> bool:
    """Wait (bounded) until `assoc`'s own thread is blocked at its reactor checkpoint.

    pynetdicom's send_c_store pauses the association's reactor by clearing a checkpoint and
    waiting for `_is_paused`, but that flag is still True from the previous send while the
    reactor wakes up: the reactor can then take the next C-STORE response off the DIMSE queue
    itself ("Received unexpected C-STORE service message") and send_c_store waits for it until
    the DIMSE timeout aborts the association (measured: once in ~700 sub-operations of a
    C-MOVE to a fast DCMTK storescp; pynetdicom issue #435 for the same race). The checkpoint
    (net/reactor.Checkpoint) tells when a thread is blocked on it, and that is what is waited
    for here. Not needed (and not possible) from the association's own thread, where a C-GET
    handler runs with the reactor stopped in it. True when paused; on False the reactor runs
    on and the caller must not use the association's DIMSE queue.
    """
    if threading.current_thread() is assoc:
        return True
    checkpoint: Checkpoint = assoc._reactor_checkpoint  # type: ignore[assignment]
    checkpoint.clear()
    activity = getattr(assoc, "activity", None)  # net/reactor.py: wake an idle reactor
    if activity is not None:
        activity.set()
    deadline = time.monotonic() + timeout
    while not checkpoint.parked.wait(PAUSE_WAIT_S):
        if not assoc.is_alive() or time.monotonic() >= deadline:
            checkpoint.set()  # not paused in time: leave the reactor running
            return False
    return True


PAUSE_WAIT_S = 0.01  # longest wait between looks at whether the association is still alive


def _payload(assoc: Association, outgoing: Outgoing) -> Path | Dataset:
    """The file itself when the receiver takes its syntax, else a transcoded data set."""
    stored = outgoing.stored
    accepted = [
        str(context.transfer_syntax[0])
        for context in assoc.accepted_contexts
        if context.abstract_syntax == stored.sop_class_uid and context.as_scu
    ]
    target = choose_transfer_syntax(stored.transfer_syntax_uid, accepted)
    if target is None:
        raise TranscodeError("receiver accepts no syntax this instance converts to")
    if target == stored.transfer_syntax_uid:
        return outgoing.path
    return transcoded_dataset(outgoing.path, target)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TranscodeError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "stored file missing"
    return type(exc).__name__


def move_contexts(presentations: frozenset[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts for a C-MOVE sub-association, built from what will be sent.

    Per SOP class: one context per stored compressed syntax (a receiver may accept each one
    alone) and one with the uncompressed syntaxes, which transcoding can always fall back to.
    Past 128 contexts, the compressed ones are dropped first.
    """
    classes = sorted({sop_class for sop_class, _syntax in presentations})
    plain = [build_context(sop_class, list(UNCOMPRESSED)) for sop_class in classes]
    specific = [
        build_context(sop_class, [syntax])
        for sop_class, syntax in sorted(presentations)
        if syntax not in UNCOMPRESSED
    ]
    return (plain + specific)[:MAX_CONTEXTS]


PeerTable = Callable[[], Mapping[str, Peer]]


class RetrieveService:
    """C-GET and C-MOVE SCP over the index and the stored files."""

    def __init__(self, index: IndexDatabase, files: FilesystemStore, peers: PeerTable) -> None:
        self.index = index
        self.files = files
        self.peers = peers

    def _selection(self, event: Event, report: StreamReport) -> Selection:
        identifier = decoded_identifier(event)
        model = model_of(str(event.request.AffectedSOPClassUID))
        level = level_of(identifier, model)
        selection = select_instances(self.index, retrieve_keys(identifier, model, level))
        report.fields.update(query_level=level.name, model=model.name, instances=selection.count)
        if selection.count > MAX_SUBOPERATIONS:
            raise OutOfResources(f"{selection.count} instances: retrieve at a lower level")
        return selection

    def on_c_get(self, event: Event, handle: ClientHandle, report: StreamReport) -> Iterator[Any]:
        """The count, then one pending Outgoing per instance, sent on this association."""
        selection = self._selection(event, report)
        install_sender(event.assoc)
        yield selection.count
        report.started_stream = True
        yield from self._send(event, selection, report)

    def on_c_move(self, event: Event, handle: ClientHandle, report: StreamReport) -> Iterator[Any]:
        """The destination from the AE table, the count, then one Outgoing per instance."""
        title = str(cast(C_MOVE, event.request).MoveDestination or "").strip()
        peer = self.peers().get(title)
        if peer is None:
            raise MoveDestinationUnknown(f"{title} is not in the AE table (peers)")
        selection = self._selection(event, report)
        report.fields["destination"] = title
        kwargs = {
            "ae_title": title,
            "contexts": move_contexts(selection.presentations),
            "tls_args": tls_args_for(peer),  # DICOM TLS to a peer marked `tls` (net/tls.py)
        }
        yield peer.host, peer.port, kwargs
        if selection.count:
            # pynetdicom answers 0xA801 itself and never resumes this generator when the
            # destination does not accept the sub-association; the log then says so.
            report.status, report.comment = (
                MOVE_DESTINATION_UNKNOWN,
                "destination did not associate",
            )
        yield selection.count
        report.started_stream = True
        yield from self._send(event, selection, report)

    def _send(self, event: Event, selection: Selection, report: StreamReport) -> Iterator[Any]:
        tally = SubOperations()
        report.status, report.comment = 0x0000, ""
        for instance in stored_instances(self.index, selection):
            if event.is_cancelled:
                report.status = CANCELLED
                report.fields.update(tally.fields())
                yield CANCELLED, None
                return
            yield PENDING, Outgoing(instance, self.files.absolute(instance.file_path), tally)
            report.fields.update(tally.fields())
        report.status = tally.final_status(selection.count)
