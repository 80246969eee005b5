"""Storage Service Class (PS3.4 Annex B): C-STORE into the archive.

`receive` gives the engine the file a C-STORE's data set is written to as it arrives (pacsd's
file meta first, storage/incoming.py); `on_c_store` then has the archive check, keep and index
it, and the status follows. The data set is never decoded here.
"""

from __future__ import annotations

from pacsd.archive import Archive, IncomingInstance, StoreOutcome
from pacsd.dicom.part10 import encode_file_meta
from pacsd.dimse.commands import AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID, Command
from pacsd.dimse.messages import AcceptedContext, Request
from pacsd.errors import CannotUnderstand
from pacsd.handle import ClientHandle
from pacsd.services.guard import OperationResult
from pacsd.storage.incoming import IncomingFile


class StorageService:
    """C-STORE SCP backed by an `Archive`."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def receive(
        self, command: Command, context: AcceptedContext, calling_ae_title: str
    ) -> IncomingFile:
        """The file a C-STORE request's data set goes to (opened on the engine's loop: one
        open and one short write)."""
        head = encode_file_meta(
            command.text(AFFECTED_SOP_CLASS_UID),
            command.text(AFFECTED_SOP_INSTANCE_UID),
            context.transfer_syntax,
            calling_ae_title,
        )
        limit = int(self.archive.limits.max_dataset_size)
        return IncomingFile(self.archive.files.tmp_dir, head, limit, context.transfer_syntax)

    def on_c_store(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Store the received instance; success only once file and index row are durable."""
        received = request.data
        if not isinstance(received, IncomingFile):
            raise CannotUnderstand("C-STORE request without a data set")
        incoming = IncomingInstance(
            spool_path=received.path,
            sop_class_uid=request.command.text(AFFECTED_SOP_CLASS_UID),
            sop_instance_uid=request.command.text(AFFECTED_SOP_INSTANCE_UID),
            calling_ae_title=handle.calling_ae_title,
        )
        # The engine discards `received` after the request (and its audit record, which reads
        # a refused file for its study and patient): a kept file has been renamed away by then.
        result = self.archive.store_received(received, incoming)
        return OperationResult(
            status=0x0000,
            size=result.dataset_size,
            outcome=result.outcome.value,
            stored=result.outcome is not StoreOutcome.DUPLICATE_KEPT_FIRST,
            subject=(result.study_instance_uid, result.patient_id),
        )
