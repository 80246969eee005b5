"""Storage Service Class (PS3.4 Annex B): C-STORE into the archive.

pynetdicom receives the data set into a Part 10 spool file (chunked receive mode) and pacsd
never decodes it here: the archive checks, stores and indexes it, and the status follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacsd.archive import Archive, IncomingInstance, StoreOutcome
from pacsd.errors import OutOfResources
from pacsd.net.dimse_limits import refused_dataset
from pacsd.net.handle import ClientHandle
from pacsd.services.guard import OperationResult


class StorageService:
    """C-STORE SCP backed by an `Archive`."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def on_c_store(self, event: Event, handle: ClientHandle) -> OperationResult:
        """Store the received instance; success only once file and index row are durable."""
        request = cast(C_STORE, event.request)
        refusal = refused_dataset(event)
        if refusal is not None:  # its fragments were discarded as they arrived
            raise OutOfResources(refusal)
        incoming = IncomingInstance(
            spool_path=Path(event.dataset_path),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            calling_ae_title=handle.calling_ae_title,
        )
        result = self.archive.store(incoming)
        return OperationResult(
            status=0x0000,
            size=result.dataset_size,
            outcome=result.outcome.value,
            stored=result.outcome is not StoreOutcome.DUPLICATE_KEPT_FIRST,
            subject=(result.study_instance_uid, result.patient_id),
        )
