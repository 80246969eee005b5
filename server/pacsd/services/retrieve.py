"""Query/Retrieve - GET and MOVE (PS3.4 C.4.2, C.4.3): stored instances sent as C-STOREs.

The identifier selects instances in the index (fixed when counted); each becomes one C-STORE
sub-operation: on the requester's own association for a C-GET, on a new association to the
destination from the AE table for a C-MOVE. The stored file goes out untouched when the
receiver accepted its transfer syntax, else transcoded (dicom/transcode), else the
sub-operation fails and the others go on. A pending response with the counts follows each
sub-operation; the final status is Success, Warning (0xB000, with the Failed SOP Instance UID
List), Failure (0xA702, all failed) or Cancel (0xFE00) (PS3.4 C.4.2.1.5, C.4.3.1.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.part10 import dataset_offset
from pacsd.dicom.qr_models import level_of, model_of, retrieve_keys
from pacsd.dicom.transcode import TranscodeError, choose_transfer_syntax, transcoded_dataset
from pacsd.dimse.messages import Request, encode_dataset
from pacsd.errors import DicomStatusError, OutOfResources
from pacsd.handle import ClientHandle
from pacsd.index.database import IndexDatabase
from pacsd.index.retrieve import Selection, StoredInstance, select_instances, stored_instances
from pacsd.services.guard import MOVE_DESTINATION_UNKNOWN, StreamReport
from pacsd.services.ports import (
    OperationPort,
    Outgoing,
    StoreSender,
    SubOperationCounts,
    SubOperationError,
)
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
    """The outcome of each C-STORE sub-operation so far."""

    total: int
    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    # Instances sent in another syntax than stored, because the receiver accepted none of the
    # stored one: "<stored keyword> -> <sent keyword>" -> count.
    converted: dict[str, int] = field(default_factory=dict)

    def convert(self, stored: str, sent: str) -> None:
        """Count one instance sent converted."""
        key = f"{UID(stored).keyword or stored} -> {UID(sent).keyword or sent}"
        self.converted[key] = self.converted.get(key, 0) + 1

    def record(self, instance: StoredInstance, status: int) -> None:
        """Count one sub-operation from its C-STORE-RSP status (PS3.4 B.2.3)."""
        if status == 0x0000:
            self.completed += 1
        elif status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
            self.warning += 1
        else:
            self.fail(instance, f"peer answered 0x{status:04X}")

    def fail(self, instance: StoredInstance, reason: str) -> None:
        """Count one failed sub-operation and why (PS3.4 C.4.3.1.3.2: its UID is listed)."""
        self.failed += 1
        self.failed_uids.append(instance.sop_instance_uid)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def done(self) -> int:
        """Sub-operations finished."""
        return self.completed + self.warning + self.failed

    def counts(self) -> SubOperationCounts:
        """The counts for a response."""
        return SubOperationCounts(self.total - self.done, self.completed, self.failed, self.warning)

    def final_status(self) -> int:
        """Success, Warning or Failure (PS3.4 C.4.2.1.5, C.4.3.1.5)."""
        if not self.failed and not self.warning:
            return 0x0000
        return 0xA702 if self.failed == self.total else 0xB000

    def fields(self) -> dict[str, Any]:
        """Log fields."""
        fields: dict[str, Any] = {
            "completed": self.completed,
            "warnings": self.warning,
            "failures": self.failed,
        }
        if self.reasons:
            fields["failure_reasons"] = dict(self.reasons)
        if self.converted:
            fields["converted"] = dict(self.converted)
        return fields


def move_contexts(presentations: frozenset[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Contexts for a C-MOVE sub-association, built from what will be sent.

    Per SOP class: one context per stored compressed syntax (a receiver may accept each one
    alone) and one with the uncompressed syntaxes, which transcoding can always fall back to.
    Past 128 contexts, the compressed ones are dropped first.
    """
    classes = sorted({sop_class for sop_class, _syntax in presentations})
    plain = [(sop_class, [str(syntax) for syntax in UNCOMPRESSED]) for sop_class in classes]
    specific = [
        (sop_class, [syntax])
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

    def _selection(self, request: Request, report: StreamReport) -> Selection:
        identifier = decoded_identifier(request)
        model = model_of(request.sop_class_uid)
        level = level_of(identifier, model)
        selection = select_instances(self.index, retrieve_keys(identifier, model, level))
        report.fields.update(query_level=level.name, model=model.name, instances=selection.count)
        if selection.count > MAX_SUBOPERATIONS:
            raise OutOfResources(f"{selection.count} instances: retrieve at a lower level")
        return selection

    def on_c_get(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """Send each selected instance on the requester's own association."""
        selection = self._selection(request, report)
        self._send(request, selection, report, port, port.same_association)

    def on_c_move(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """Send each selected instance on a new association to the Move Destination."""
        title = request.move_destination.strip()
        peer = self.peers().get(title)
        if peer is None:
            raise MoveDestinationUnknown(f"{title} is not in the AE table (peers)")
        selection = self._selection(request, report)
        report.fields["destination"] = title
        if not selection.count:
            report.sub_operations = SubOperations(0).counts()
            return
        with port.sub_association(peer, move_contexts(selection.presentations)) as sender:
            self._send(request, selection, report, port, sender)

    def _send(
        self,
        request: Request,
        selection: Selection,
        report: StreamReport,
        port: OperationPort,
        sender: StoreSender,
    ) -> None:
        tally = SubOperations(selection.count)
        try:
            for instance in stored_instances(self.index, selection):
                if request.cancelled:
                    report.status = CANCELLED
                    return
                self._sub_operation(instance, tally, sender)
                report.sub_operations = tally.counts()
                port.pending(PENDING, counts=tally.counts())
            report.status = tally.final_status()
        finally:
            report.sub_operations = tally.counts()
            report.failed_uids = tally.failed_uids
            report.fields.update(tally.fields())

    def _sub_operation(
        self, instance: StoredInstance, tally: SubOperations, sender: StoreSender
    ) -> None:
        try:
            outgoing = self._outgoing(instance, sender)
            status = sender.send_c_store(outgoing)
            if outgoing.transfer_syntax != instance.transfer_syntax_uid:
                tally.convert(instance.transfer_syntax_uid, outgoing.transfer_syntax)
        except TranscodeError as exc:
            tally.fail(instance, str(exc))
        except FileNotFoundError:
            tally.fail(instance, "stored file missing")
        except SubOperationError as exc:
            tally.fail(instance, str(exc))
        except (OSError, DicomStatusError) as exc:  # an unreadable stored file: this one fails
            tally.fail(instance, f"stored file unreadable: {type(exc).__name__}")
        else:
            tally.record(instance, status)

    def _outgoing(self, instance: StoredInstance, sender: StoreSender) -> Outgoing:
        """The file itself when the receiver takes its syntax, else a transcoded data set."""
        path = self.files.absolute(instance.file_path)
        accepted = sender.accepted_syntaxes(instance.sop_class_uid)
        if not accepted:
            raise TranscodeError("no accepted context where pacsd may send this SOP class")
        target = choose_transfer_syntax(instance.transfer_syntax_uid, accepted)
        if target is None:
            raise TranscodeError("receiver accepts no syntax this instance converts to")
        uids = (instance.sop_class_uid, instance.sop_instance_uid)
        if target == instance.transfer_syntax_uid:
            return Outgoing(*uids, target, path=path, offset=dataset_offset(path))
        return Outgoing(
            *uids, target, data=encode_dataset(transcoded_dataset(path, target), target)
        )
