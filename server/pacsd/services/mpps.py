"""Modality Performed Procedure Step SCP (PS3.4 F.7, F.8): N-CREATE, N-SET, N-GET.

The rules of the step's life (required attributes, IN PROGRESS -> COMPLETED / DISCONTINUED,
nothing after a final state) are dicom/mpps; the steps live in the index (index/mpps), so an
operator sees which are complete and whether their series arrived (`pacsd mpps list`).
"""

from __future__ import annotations

from typing import cast

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_GET, N_SET
from pynetdicom.events import Event

from pacsd.dicom.header import index_text
from pacsd.dicom.mpps import COMPLETED, apply_set, check_create, check_set
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.errors import ProcessingFailure, UnrecognizedOperation
from pacsd.index.database import IndexDatabase
from pacsd.index.mpps import create_step, read_step, update_step
from pacsd.index.worklist import retire_steps
from pacsd.net.handle import ClientHandle
from pacsd.services.guard import NormalizedResult

MPPS = "1.2.840.10008.3.1.2.3.3"
MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.4"  # N-GET of a step, PS3.4 F.8
_UID_ROOT = f"{IMPLEMENTATION_CLASS_UID}.3."


def _require_mpps_class(uid: object, service: str) -> None:
    if str(uid) != MPPS:
        raise UnrecognizedOperation(f"{service} is not a service of SOP class {uid}")


class MppsService:
    """N-CREATE / N-SET / N-GET of performed procedure steps."""

    def __init__(self, index: IndexDatabase, retire_completed: bool = False) -> None:
        self.index = index
        self.retire_completed = retire_completed

    def on_n_create(self, event: Event, handle: ClientHandle) -> NormalizedResult:
        """Check and store a new IN PROGRESS step; generate its UID when the SCU sent none."""
        request = cast(N_CREATE, event.request)
        _require_mpps_class(request.AffectedSOPClassUID, "N-CREATE")
        attributes = _decoded(event, "attribute_list")
        check_create(attributes)
        uid = str(request.AffectedSOPInstanceUID or "")
        response: Dataset | None = None
        if not uid:
            uid = generate_uid(_UID_ROOT)
            response = Dataset()
            response.AffectedSOPInstanceUID = uid  # pynetdicom moves it to the response command
        create_step(self.index, uid, attributes, handle.calling_ae_title)
        handle.log.info("performed procedure step created", sop_instance_uid=uid)
        return 0x0000, response

    def on_n_set(self, event: Event, handle: ClientHandle) -> NormalizedResult:
        """Apply a Modification List to a step that is still IN PROGRESS."""
        request = cast(N_SET, event.request)
        _require_mpps_class(request.RequestedSOPClassUID, "N-SET")
        modification = _decoded(event, "modification_list")
        uid = str(request.RequestedSOPInstanceUID or "")

        def change(status: str, current: Dataset) -> tuple[str, Dataset]:
            new_status = check_set(status, modification, current)
            return new_status, apply_set(current, modification)

        attributes = update_step(self.index, uid, change)
        status = str(attributes.get("PerformedProcedureStepStatus", ""))
        handle.log.info(
            "performed procedure step updated", sop_instance_uid=uid, step_status=status
        )
        if status == COMPLETED and self.retire_completed:
            retired = retire_steps(self.index, _scheduled_steps(attributes))
            handle.log.info("worklist items retired", sop_instance_uid=uid, items=retired)
        return 0x0000, None

    def on_n_get(self, event: Event, handle: ClientHandle) -> NormalizedResult:
        """The requested attributes of a step (all of them when the list is empty)."""
        request = cast(N_GET, event.request)
        uid = str(request.RequestedSOPInstanceUID or "")
        stored = read_step(self.index, uid)
        identifiers = request.AttributeIdentifierList or []
        wanted = [
            int(tag) for tag in (identifiers if isinstance(identifiers, list) else [identifiers])
        ]
        if not wanted:
            return 0x0000, stored
        result = Dataset()
        if "SpecificCharacterSet" in stored:
            result.SpecificCharacterSet = stored.SpecificCharacterSet
        for tag in wanted:
            if tag in stored:
                result[tag] = stored[tag]
            else:
                _add_empty(result, tag)
        return 0x0000, result


def _scheduled_steps(attributes: Dataset) -> list[tuple[str, str, str]]:
    """(Accession Number, Requested Procedure ID, Scheduled Procedure Step ID) per item."""
    return [
        (
            index_text(item, "AccessionNumber"),
            index_text(item, "RequestedProcedureID"),
            index_text(item, "ScheduledProcedureStepID"),
        )
        for item in attributes.get("ScheduledStepAttributesSequence") or []
        if index_text(item, "ScheduledProcedureStepID")
    ]


def _decoded(event: Event, name: str) -> Dataset:
    try:
        dataset: Dataset = getattr(event, name)
        dataset.decode()
    except Exception as exc:
        raise ProcessingFailure(f"{name.replace('_', ' ')} cannot be decoded: {exc}") from None
    return dataset


def _add_empty(result: Dataset, tag: int) -> None:
    """PS3.4 F.8.2.1: a requested attribute the step lacks comes back with no value."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return
    result.add_new(tag, vr, None)
