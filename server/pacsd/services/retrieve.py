"""Query/Retrieve - GET and MOVE (PS3.4 C.4.2, C.4.3, Annex Y, Annex Z): instances as C-STOREs.

The identifier selects instances in the index (fixed when counted); each becomes one C-STORE
sub-operation: on the requester's own association for a C-GET, on a new association to the
destination from the AE table for a C-MOVE. The stored file goes out untouched when the
receiver accepted its transfer syntax, else transcoded (dicom/transcode), else the
sub-operation fails and the others go on. A pending response with the counts follows each
sub-operation; the final status is Success, Warning (0xB000, with the Failed SOP Instance UID
List), Failure (0xA702, all failed) or Cancel (0xFE00) (PS3.4 C.4.2.1.5, C.4.3.1.5).

Composite Instance Root (Annex Y) selects by SOP Instance UID alone; at FRAME level one new
instance is made of the requested frames (dicom/frames.py) before anything is sent, and what
keeps it from being made ends the operation with 0xAA00-0xAA04 (Tables Y.4-1, Y.4-2). Retrieve
Without Bulk Data (Annex Z) sends each instance without its bulk data (Table Z.1-1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacsd.dicom.frames import (
    CannotExtractFrames,
    Extraction,
    FrameRequest,
    InvalidFrameRequest,
    bulk_free_syntax,
    encapsulated_frames,
    encapsulated_pixel_data,
    frame_count,
    frame_request,
    has_frame_keys,
    make_new_instance,
    native_frames,
    read_stored,
    without_bulk_data,
)
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, read_layout
from pacsd.dicom.qr_models import Level, level_of, model_of, retrieve_keys
from pacsd.dicom.transcode import (
    WRITABLE_UNCOMPRESSED,
    TranscodeError,
    can_decode,
    can_encode,
    choose_transfer_syntax,
    transcoded_dataset,
)
from pacsd.dicom.transfer_syntaxes import LOSSLESS
from pacsd.dimse.messages import Request, encode_dataset
from pacsd.errors import DicomStatusError, OutOfResources
from pacsd.handle import ClientHandle
from pacsd.index.database import IndexDatabase
from pacsd.index.retrieve import Selection, StoredInstance, select_instances, stored_instances
from pacsd.services.guard import MOVE_DESTINATION_UNKNOWN, StreamReport, error_comment
from pacsd.services.ports import (
    AFTER_FILE_META,
    OperationPort,
    Outgoing,
    StoreSender,
    SubOperationCounts,
    SubOperationError,
    unreadable_reason,
)
from pacsd.services.query import CANCELLED, PENDING, decoded_identifier
from pacsd.settings import Peer
from pacsd.storage.base import InstanceStore

# PS3.7 C.4.2.1.5 / C.4.3.1.5: the counts in the responses are US, so at most 65535 per request.
MAX_SUBOPERATIONS = 65535
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1-255
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
EXTRACTED_UID_ROOT = f"{IMPLEMENTATION_CLASS_UID}.4."  # new instances of FRAME level retrieves
# Why a sub-operation has no context at all (not a transfer syntax problem). PS3.4 C.4.3.1:
# C-GET's C-STOREs go on the requester's own association, which needs a context of the SOP
# class where the requester took the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4) and the
# policy rule granted it (`peer_scp_role`).
NO_SCP_ROLE = "requester has no SCP role for {sop_class} (PS3.7 D.3.3.4)"
NO_DESTINATION_CONTEXT = "destination accepted no context for {sop_class}"


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


class StoredSource:
    """One instance's stored file as its sub-operation reads it, nothing opened until asked.

    As stored, the data set goes from the filesystem's file itself (the engine reads it on the
    loop), or from the object store's reader (ranged GETs with a bounded read-ahead, read by
    the engine in an executor thread): no copy either way. What needs a local path (transcoding,
    removing bulk data) gets the file itself, or an object fetched into the work folder. Both
    the reader and a copy last until the context ends, after the C-STORE-RSP came.
    """

    def __init__(self, files: InstanceStore, relative_path: str) -> None:
        self.files = files
        self.relative_path = relative_path
        self._local = files.local_path(relative_path)
        self._held = ExitStack()

    def __enter__(self) -> StoredSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held.close()

    def path(self) -> Path:
        """A local path holding the stored file: the file itself, else a temporary copy."""
        if self._local is None:
            self._local = self._held.enter_context(self.files.local_copy(self.relative_path))
        return self._local

    def as_stored(self, sop_class_uid: str, sop_instance_uid: str, syntax: str) -> Outgoing:
        """The stored data set as it is, from its file meta's end (PS3.10 7.1)."""
        uids = (sop_class_uid, sop_instance_uid)
        if self._local is not None:
            return Outgoing(*uids, syntax, path=self._local, offset=AFTER_FILE_META)
        stream = self._held.enter_context(self.files.open(self.relative_path))
        layout = read_layout(stream)
        return Outgoing(
            *uids, syntax, stream=stream, offset=layout.dataset_offset, size=layout.file_size
        )


PeerTable = Callable[[], Mapping[str, Peer]]
# What each selected instance sends, given its stored file.
MakeOutgoing = Callable[[StoredInstance, StoreSender, StoredSource], Outgoing]
# A local path holding a stored file while the context lasts (InstanceStore.local_copy).
LocalFile = Callable[[], AbstractContextManager[Path]]


@dataclass(frozen=True)
class Plan:
    """A retrieve's selected instances, and what each one sends."""

    selection: Selection
    outgoing: MakeOutgoing


@dataclass
class ExtractedInstance:
    """The one new instance of a FRAME level retrieve (PS3.4 Y.3.3), made before anything is
    sent and never stored: its frames kept compressed as stored when the fragments tell them
    apart, else decoded."""

    local_file: LocalFile
    extraction: Extraction
    dataset: Dataset
    compressed: bool

    @classmethod
    def make(
        cls, local_file: LocalFile, stored: StoredInstance, request: FrameRequest
    ) -> ExtractedInstance:
        """Read the source and extract its frames; 0xAA00-0xAA04 when that cannot be done."""
        try:
            with local_file() as path:
                return cls._extract(local_file, path, stored, request)
        except FileNotFoundError:
            raise CannotExtractFrames("stored file missing") from None
        except OSError as exc:
            raise CannotExtractFrames(f"stored file unreadable: {exc}") from None

    @classmethod
    def _extract(
        cls, local_file: LocalFile, path: Path, stored: StoredInstance, request: FrameRequest
    ) -> ExtractedInstance:
        try:
            source = read_stored(path, stored.transfer_syntax_uid)
        except FileNotFoundError:
            raise CannotExtractFrames("stored file missing") from None
        except (OSError, TranscodeError) as exc:
            raise CannotExtractFrames(f"stored file unreadable: {exc}") from None
        frames = request.frame_numbers(source)
        uid = generate_uid(EXTRACTED_UID_ROOT)
        extraction = Extraction(request, tuple(frames), frame_count(source), uid, datetime.now())
        syntax = UID(source.file_meta.TransferSyntaxUID)
        if syntax.is_encapsulated:
            kept = encapsulated_frames(source, frames, extraction.count, syntax)
            if kept is not None:
                dataset = make_new_instance(source, extraction, encapsulated_pixel_data(kept))
                return cls(local_file, extraction, dataset, compressed=True)
            if not can_decode(syntax):
                raise CannotExtractFrames(f"frames of {syntax.keyword or syntax} cannot be split")
            try:
                source = transcoded_dataset(path, ExplicitVRLittleEndian)
            except TranscodeError as exc:
                raise CannotExtractFrames(str(exc)) from None
        return cls(local_file, extraction, _from_native(source, extraction), compressed=False)

    def fields(self) -> dict[str, Any]:
        """Log fields: which key, how many frames of how many, kept compressed or not."""
        return {
            "frame_key": self.extraction.request.keyword,
            "frames": len(self.extraction.frames),
            "source_frames": self.extraction.count,
            "frames_compressed_as_stored": self.compressed,
        }

    def outgoing(
        self, stored: StoredInstance, sender: StoreSender, _source: StoredSource
    ) -> Outgoing:
        """The new instance in a syntax the receiver accepted: as made when it can, else its
        frames decoded, then uncompressed or losslessly compressed (never stored)."""
        accepted = _accepted(sender, stored.sop_class_uid)
        syntax = str(self.dataset.file_meta.TransferSyntaxUID)
        if syntax not in accepted:
            if self.compressed:
                with self.local_file() as path:
                    native = transcoded_dataset(path, ExplicitVRLittleEndian)
                self.dataset, self.compressed = _from_native(native, self.extraction), False
            syntax = _native_target(self.dataset, accepted)
        uids = (stored.sop_class_uid, self.extraction.sop_instance_uid)
        return Outgoing(*uids, syntax, data=encode_dataset(self.dataset, syntax))


def _from_native(source: Dataset, extraction: Extraction) -> Dataset:
    pixels = native_frames(source, extraction.frames, extraction.count)
    return make_new_instance(source, extraction, pixels)


def _native_target(dataset: Dataset, accepted: list[str]) -> str:
    """An accepted uncompressed syntax, else an accepted lossless one pacsd encodes (in place)."""
    target = next((uid for uid in WRITABLE_UNCOMPRESSED if uid in accepted), None)
    if target is None:
        target = next((uid for uid in accepted if uid in LOSSLESS and can_encode(uid)), None)
        if target is None:
            raise TranscodeError("receiver accepts no syntax the new instance converts to")
        try:
            dataset.compress(target, generate_instance_uid=False)
        except (ValueError, RuntimeError, TypeError, NotImplementedError, AttributeError) as exc:
            raise TranscodeError(f"frames cannot be encoded as {UID(target).keyword}") from exc
    dataset.file_meta.TransferSyntaxUID = UID(target)
    return target


class RetrieveService:
    """C-GET and C-MOVE SCP over the index and the stored files."""

    def __init__(self, index: IndexDatabase, files: InstanceStore, peers: PeerTable) -> None:
        self.index = index
        self.files = files
        self.peers = peers

    def _plan(self, request: Request, report: StreamReport) -> Plan:
        """The instances to send and how each one becomes what is sent."""
        identifier = decoded_identifier(request)
        model = model_of(request.sop_class_uid)
        level = level_of(identifier, model)
        frames = frame_request(identifier) if level is Level.FRAME else None
        if frames is None and Level.FRAME in model.levels and has_frame_keys(identifier):
            raise InvalidFrameRequest("frame range keys need Query/Retrieve Level FRAME")
        keys = retrieve_keys(identifier, model, level)
        if frames is not None and len(keys[Level.IMAGE]) != 1:
            # PS3.4 Y.6.1.1.4: a FRAME level retrieve makes one instance from one instance.
            raise InvalidFrameRequest("a FRAME retrieve names exactly one SOP Instance UID")
        selection = select_instances(self.index, keys)
        report.fields.update(query_level=level.name, model=model.name, instances=selection.count)
        if selection.count > MAX_SUBOPERATIONS:
            raise OutOfResources(f"{selection.count} instances: retrieve at a lower level")
        if frames is not None and selection.count:
            stored = next(stored_instances(self.index, selection))
            local_file = partial(self.files.local_copy, stored.file_path)
            extracted = ExtractedInstance.make(local_file, stored, frames)
            report.fields.update(extracted.fields())
            return Plan(selection, extracted.outgoing)
        if not model.bulk_data:
            return Plan(selection, self._without_bulk_data)
        return Plan(selection, self._outgoing)

    def on_c_get(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """Send each selected instance on the requester's own association."""
        plan = self._plan(request, report)
        self._send(request, plan, report, port, port.same_association, NO_SCP_ROLE)

    def on_c_move(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """Send each selected instance on a new association to the Move Destination."""
        title = request.move_destination.strip()
        peer = self.peers().get(title)
        if peer is None:
            raise MoveDestinationUnknown(f"{title} is not in the AE table (peers)")
        plan = self._plan(request, report)
        report.fields["destination"] = title
        if not plan.selection.count:
            report.sub_operations = SubOperations(0).counts()
            return
        with port.sub_association(peer, move_contexts(plan.selection.presentations)) as sender:
            self._send(request, plan, report, port, sender, NO_DESTINATION_CONTEXT)

    def _send(
        self,
        request: Request,
        plan: Plan,
        report: StreamReport,
        port: OperationPort,
        sender: StoreSender,
        no_context: str,
    ) -> None:
        tally = SubOperations(plan.selection.count)
        batch = _Batch(sender, port, tally, report, request)
        try:
            if not self._send_all(request, plan, sender, no_context, batch):
                report.status = CANCELLED
                return
            report.status = tally.final_status()
            if tally.reasons:  # the Error Comment of a Warning or Failure: the commonest cause
                commonest = max(tally.reasons.items(), key=lambda item: item[1])[0]
                report.comment = error_comment(commonest)
        finally:
            report.sub_operations = tally.counts()
            report.failed_uids = tally.failed_uids
            report.fields.update(tally.fields())

    def _send_all(
        self, request: Request, plan: Plan, sender: StoreSender, no_context: str, batch: _Batch
    ) -> bool:
        """Every selected instance sent or failed, each with its Pending response; False when
        the operation was cancelled first."""
        for instance in stored_instances(self.index, plan.selection):
            if request.cancelled or not batch.send_if_full():
                return False
            if not sender.accepted_syntaxes(instance.sop_class_uid):
                name = UID(instance.sop_class_uid).keyword or instance.sop_class_uid
                failure: str | None = no_context.format(sop_class=name)
            else:
                failure = self._sub_operation(instance, plan, sender, batch)
            if failure is not None:
                if not batch.send():  # what came before first, in order
                    return False
                batch.failed(instance, failure)
        return batch.send()

    def _sub_operation(
        self,
        instance: StoredInstance,
        plan: Plan,
        sender: StoreSender,
        batch: _Batch,
    ) -> str | None:
        """Send one instance, or add it to `batch` (a local file as stored); why it failed,
        or None (its Pending response is sent with it)."""
        # Opened only as `plan.outgoing` asks; kept until the C-STORE-RSP came (send_c_store
        # waits for it), then closed. A local file sent as stored holds nothing open.
        try:
            with StoredSource(self.files, instance.file_path) as source:
                outgoing = plan.outgoing(instance, sender, source)
                if outgoing.path is not None:
                    batch.add(instance, outgoing)
                    return None
                if not batch.send():
                    return None  # cancelled: _send sees it before the next instance
                status = sender.send_c_store(outgoing)
            if outgoing.transfer_syntax != instance.transfer_syntax_uid:
                batch.tally.convert(instance.transfer_syntax_uid, outgoing.transfer_syntax)
        except TranscodeError as exc:
            return str(exc)
        except SubOperationError as exc:
            return str(exc)
        except (OSError, DicomStatusError) as exc:  # an unreadable stored file: this one fails
            return unreadable_reason(exc)
        batch.sent_alone(instance, status)
        return None

    def _outgoing(
        self, instance: StoredInstance, sender: StoreSender, source: StoredSource
    ) -> Outgoing:
        """The file itself when the receiver takes its syntax, else a transcoded data set."""
        accepted = _accepted(sender, instance.sop_class_uid)
        target = choose_transfer_syntax(instance.transfer_syntax_uid, accepted)
        if target is None:
            raise TranscodeError("receiver accepts no syntax this instance converts to")
        uids = (instance.sop_class_uid, instance.sop_instance_uid)
        if target == instance.transfer_syntax_uid:
            return source.as_stored(*uids, target)
        dataset = transcoded_dataset(source.path(), target)
        return Outgoing(*uids, target, data=encode_dataset(dataset, target))

    def _without_bulk_data(
        self, instance: StoredInstance, sender: StoreSender, source: StoredSource
    ) -> Outgoing:
        """PS3.4 Z.4.2.3.1: the instance without the attributes of Table Z.1-1, else unchanged;
        one that has none of them goes as stored (Z.1.4 note)."""
        accepted = _accepted(sender, instance.sop_class_uid)
        removed: list[str] = []
        dataset = read_stored(
            source.path(),
            instance.transfer_syntax_uid,
            lambda ds: removed.extend(without_bulk_data(ds)),
        )
        if not removed:
            return self._outgoing(instance, sender, source)
        target = bulk_free_syntax(dataset, accepted)
        dataset.file_meta.TransferSyntaxUID = UID(target)
        uids = (instance.sop_class_uid, instance.sop_instance_uid)
        return Outgoing(*uids, target, data=encode_dataset(dataset, target))


class _Batch:
    """Sub-operations of local files sent as stored, handed to the engine together
    (StoreSender.send_c_stores): the engine sends each after the previous one's response and
    its Pending response, with no round trip to this thread in between."""

    SIZE = 64  # at most this many stored files are named at once

    def __init__(
        self,
        sender: StoreSender,
        port: OperationPort,
        tally: SubOperations,
        report: StreamReport,
        request: Request,
    ) -> None:
        self.sender, self.port, self.tally = sender, port, tally
        self.report, self.request = report, request
        self.instances: list[StoredInstance] = []
        self.outgoing: list[Outgoing] = []

    def add(self, instance: StoredInstance, outgoing: Outgoing) -> None:
        self.instances.append(instance)
        self.outgoing.append(outgoing)

    def send_if_full(self) -> bool:
        """Send the batch once it holds SIZE; False if cancelled meanwhile."""
        return len(self.outgoing) < self.SIZE or self.send()

    def send(self) -> bool:
        """Send what the batch holds; False if the operation was cancelled meanwhile."""
        if not self.outgoing:
            return True
        count = len(self.outgoing)
        try:
            sent = self.sender.send_c_stores(self.outgoing, self._on_result, self._cancelled)
        finally:
            self.instances, self.outgoing = [], []
        return sent == count

    def sent_alone(self, instance: StoredInstance, status: int) -> None:
        """One sub-operation sent outside a batch: count it, send its Pending response."""
        self.port.pending(PENDING, counts=self._counted(instance, status))

    def failed(self, instance: StoredInstance, reason: str) -> None:
        """One sub-operation that failed before it was sent: count it, send its Pending."""
        self.port.pending(PENDING, counts=self._counted(instance, reason))

    def _on_result(self, index: int, result: int | str) -> SubOperationCounts:
        return self._counted(self.instances[index], result)  # the engine sends the Pending

    def _counted(self, instance: StoredInstance, result: int | str) -> SubOperationCounts:
        if isinstance(result, int):
            self.tally.record(instance, result)
        else:
            self.tally.fail(instance, result)
        self.report.sub_operations = counts = self.tally.counts()
        return counts

    def _cancelled(self) -> bool:
        return self.request.cancelled


def _accepted(sender: StoreSender, sop_class_uid: str) -> list[str]:
    accepted = sender.accepted_syntaxes(sop_class_uid)
    if not accepted:
        raise TranscodeError("no accepted context where pacsd may send this SOP class")
    return accepted
