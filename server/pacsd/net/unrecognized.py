"""Unrecognized operations: a DIMSE request a service class does not define gets 0x0211.

pynetdicom hands every request on a context to the service class of its SOP class; a request
that class does not define (an N-DELETE on the MPPS context, an N-GET on Storage Commitment, a
C-FIND on a storage context) makes the class raise, or misread the request, and pynetdicom then
aborts the association. PS3.7 C.5.22 has the answer instead: Unrecognized Operation (0x0211),
after which the association goes on. `install()` wraps the SCP method of the service classes
pacsd serves so that such a request gets that response, and logs it (process-wide, once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom.dimse_primitives import (
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_ACTION,
    N_CREATE,
    N_GET,
    N_SET,
)
from pynetdicom.service_class import (
    BasicWorklistManagementServiceClass,
    QueryRetrieveServiceClass,
    ServiceClass,
    StorageServiceClass,
    VerificationServiceClass,
)
from pynetdicom.service_class_n import ProcedureStepServiceClass, StorageCommitmentServiceClass

from pacsd.logs import get_logger

UNRECOGNIZED_OPERATION = 0x0211
# The requests each served service class defines (PS3.4), by pynetdicom primitive.
DEFINED: dict[type[ServiceClass], tuple[type, ...]] = {
    VerificationServiceClass: (C_ECHO,),
    StorageServiceClass: (C_STORE,),
    QueryRetrieveServiceClass: (C_FIND, C_GET, C_MOVE),
    BasicWorklistManagementServiceClass: (C_FIND,),
    ProcedureStepServiceClass: (N_CREATE, N_SET, N_GET),
    StorageCommitmentServiceClass: (N_ACTION,),
}

log = get_logger("pacsd.association")


def install() -> None:
    """Wrap the SCP method of each class in DEFINED (idempotent)."""
    for service_class, defined in DEFINED.items():
        original = service_class.__dict__["SCP"]
        if getattr(original, "pacsd_wrapped", False):
            continue
        service_class.SCP = _wrapped(original, defined)  # type: ignore[method-assign]


def _wrapped(original: Callable[..., None], defined: tuple[type, ...]) -> Callable[..., None]:
    def scp(self: ServiceClass, request: Any, context: Any) -> None:
        if isinstance(request, defined):
            original(self, request, context)
            return
        answer_unrecognized(self, request, context)

    scp.pacsd_wrapped = True  # type: ignore[attr-defined]
    return scp


def answer_unrecognized(service: ServiceClass, request: Any, context: Any) -> None:
    """Send the request's own response type with status 0x0211, and log it."""
    response = type(request)()
    response.MessageIDBeingRespondedTo = request.MessageID
    sop_class = getattr(request, "AffectedSOPClassUID", None) or getattr(
        request, "RequestedSOPClassUID", None
    )
    instance = getattr(request, "AffectedSOPInstanceUID", None) or getattr(
        request, "RequestedSOPInstanceUID", None
    )
    if hasattr(response, "AffectedSOPClassUID") and sop_class:
        response.AffectedSOPClassUID = sop_class
    if hasattr(response, "AffectedSOPInstanceUID") and instance:
        response.AffectedSOPInstanceUID = instance
    response.Status = UNRECOGNIZED_OPERATION
    service.dimse.send_msg(response, context.context_id)
    assoc = service.assoc
    log.warning(
        "unrecognized operation answered 0x0211",
        request=request.msg_type,
        sop_class=str(sop_class or ""),
        context_id=context.context_id,
        calling_ae_title=str(assoc.requestor.ae_title),
        peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
    )
