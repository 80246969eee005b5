"""Modality Performed Procedure Step SCP (PS3.4 F.7, F.8): N-CREATE, N-SET, N-GET.

The rules of the step's life (required attributes, IN PROGRESS -> COMPLETED / DISCONTINUED,
nothing after a final state) are dicom/mpps; the steps live in the index (index/mpps), so an
operator sees which are complete and whether their series arrived (`pacsd mpps list`).
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsd.dicom.header import index_text
from pacsd.dicom.mpps import COMPLETED, apply_set, check_create, check_set
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.dimse.commands import ATTRIBUTE_IDENTIFIER_LIST
from pacsd.dimse.messages import Request
from pacsd.errors import ProcessingFailure, UnrecognizedOperation
from pacsd.handle import ClientHandle
from pacsd.index.database import IndexDatabase
from pacsd.index.mpps import create_step, read_step, update_step
from pacsd.index.worklist import retire_steps
from pacsd.services.guard import OperationResult

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

    def on_n_create(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Check and store a new IN PROGRESS step; generate its UID when the SCU sent none."""
        _require_mpps_class(request.sop_class_uid, "N-CREATE")
        attributes = _decoded(request, "attribute list")
        check_create(attributes)
        uid = request.sop_instance_uid
        generated = ""
        if not uid:
            uid = generated = generate_uid(_UID_ROOT)  # PS3.7 10.1.5.1.4: in the response
        create_step(self.index, uid, attributes, handle.calling_ae_title)
        handle.log.info("performed procedure step created", sop_instance_uid=uid)
        return OperationResult(0x0000, affected_sop_instance_uid=generated)

    def on_n_set(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Apply a Modification List to a step that is still IN PROGRESS."""
        _require_mpps_class(request.sop_class_uid, "N-SET")
        modification = _decoded(request, "modification list")
        uid = request.sop_instance_uid

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
        return OperationResult(0x0000)

    def on_n_get(self, request: Request, handle: ClientHandle) -> OperationResult:
        """The requested attributes of a step (all of them when the list is empty)."""
        uid = request.sop_instance_uid
        stored = read_step(self.index, uid)
        wanted = list(request.command.tags(ATTRIBUTE_IDENTIFIER_LIST))
        if not wanted:
            return OperationResult(0x0000, dataset=stored)
        result = Dataset()
        if "SpecificCharacterSet" in stored:
            result.SpecificCharacterSet = stored.SpecificCharacterSet
        for tag in wanted:
            if tag in stored:
                result[tag] = stored[tag]
            else:
                _add_empty(result, tag)
        return OperationResult(0x0000, dataset=result)


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


def _decoded(request: Request, name: str) -> Dataset:
    try:
        dataset = request.dataset()
        dataset.decode()
    except Exception as exc:
        raise ProcessingFailure(f"{name} cannot be decoded: {exc}") from None
    return dataset


def _add_empty(result: Dataset, tag: int) -> None:
    """PS3.4 F.8.2.1: a requested attribute the step lacks comes back with no value."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return
    result.add_new(tag, vr, None)
