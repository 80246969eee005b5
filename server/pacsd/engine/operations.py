"""Each request an acceptor receives, routed to its service and answered.

A request must be one the service class of its presentation context defines (PS3.4: C-STORE
on a storage context, N-ACTION on Storage Commitment, ...), else 0x0211 Unrecognized
Operation (PS3.7 C.5.22); its SOP class must be its context's, else 0x0122 SOP Class Not
Supported. Then the guard (policy, statuses, log, audit) runs the service: C-ECHO on the event
loop (it does nothing), C-STORE in the I/O executor (fsync and index commit), the others in
the operations executor, where the streaming ones (C-FIND, C-GET, C-MOVE) talk back through a
port (engine/ports.py). Every parsed request gets a response; the association goes on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pacsd import audit
from pacsd.dicom.sop_classes import in_context, operation_of, sop_class_keyword
from pacsd.dimse import commands as c
from pacsd.dimse.commands import COMMAND_NAMES, Command
from pacsd.dimse.messages import AcceptedContext, Request, encode_dataset
from pacsd.engine.dimse import DataSink, MemorySink, message_pdus
from pacsd.engine.ports import ThreadPort
from pacsd.engine.responses import response
from pacsd.handle import ClientHandle
from pacsd.services.commitment import CommitmentService
from pacsd.services.guard import (
    Operation,
    Response,
    StreamOperation,
    StreamReport,
    run_operation,
    run_stream,
)
from pacsd.services.mpps import MppsService
from pacsd.services.query import QueryService
from pacsd.services.retrieve import RetrieveService
from pacsd.services.storage import StorageService
from pacsd.services.verification import on_c_echo
from pacsd.services.worklist import WorklistService
from pacsd.storage.incoming import IncomingFile

if TYPE_CHECKING:
    from pacsd.engine.acceptor import Acceptor

UNRECOGNIZED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122
# The requests each built-in service class defines (PS3.4), by the policy operation of its SOP
# classes; Services.simple / Services.streams add the requests of the other services.
DEFINED: dict[str, frozenset[int]] = {
    "echo": frozenset({c.C_ECHO_RQ}),
    "store": frozenset({c.C_STORE_RQ}),
    "find": frozenset({c.C_FIND_RQ}),
    "worklist": frozenset({c.C_FIND_RQ}),
    "get": frozenset({c.C_GET_RQ}),
    "move": frozenset({c.C_MOVE_RQ}),
    "commit": frozenset({c.N_ACTION_RQ}),
    "mpps": frozenset({c.N_CREATE_RQ, c.N_SET_RQ, c.N_GET_RQ}),
}
_FAILED_UID_STATUSES = frozenset({0xB000, 0xA702, 0xFE00})


@dataclass(frozen=True)
class Services:
    """The DIMSE services the engine routes requests to.

    Beyond the built-in ones, `simple` and `streams` route a (command field, policy operation
    of the context's SOP class) to a service's handler: one answer (N-services), or pending
    answers through a port (C-FIND-like). A request of a service class is answered 0x0211 when
    no route exists for its command field.
    """

    storage: StorageService
    query: QueryService
    retrieve: RetrieveService
    worklist: WorklistService
    mpps: MppsService
    commitment: CommitmentService
    simple: Mapping[tuple[int, str], Operation] = field(default_factory=dict)
    streams: Mapping[tuple[int, str], StreamOperation] = field(default_factory=dict)


class Operations:
    """Routes and runs the requests of every acceptor of one engine."""

    def __init__(self, services: Services, io: Executor, work: Executor, memory_limit: int) -> None:
        self.services = services
        self.io = io
        self.work = work
        self.memory_limit = memory_limit
        self._groups: dict[str, str] = {}
        s = services
        self._simple: dict[tuple[int, str], Operation] = {
            (c.N_ACTION_RQ, "commit"): s.commitment.on_n_action,
            (c.N_CREATE_RQ, "mpps"): s.mpps.on_n_create,
            (c.N_SET_RQ, "mpps"): s.mpps.on_n_set,
            (c.N_GET_RQ, "mpps"): s.mpps.on_n_get,
            **s.simple,
        }
        self._streams: dict[tuple[int, str], StreamOperation] = {
            (c.C_FIND_RQ, "find"): s.query.on_c_find,
            (c.C_FIND_RQ, "worklist"): s.worklist.on_c_find,
            (c.C_GET_RQ, "get"): s.retrieve.on_c_get,
            (c.C_MOVE_RQ, "move"): s.retrieve.on_c_move,
            **s.streams,
        }
        defined = {group: set(fields) for group, fields in DEFINED.items()}
        for command_field, group in (*s.simple, *s.streams):
            defined.setdefault(group, set()).add(command_field)
        self.defined = {group: frozenset(fields) for group, fields in defined.items()}

    def group_of(self, abstract_syntax: str) -> str:
        """The policy operation (and service class) of a context's SOP class (cached)."""
        group = self._groups.get(abstract_syntax)
        if group is None:
            group = self._groups[abstract_syntax] = operation_of(abstract_syntax)
        return group

    def data_sink(self, assoc: Acceptor, command: Command, context: AcceptedContext) -> DataSink:
        """A C-STORE's data set goes into its file as it arrives; the rest into memory."""
        if command.field == c.C_STORE_RQ and self.group_of(context.abstract_syntax) == "store":
            return self.services.storage.receive(command, context, assoc.handle.calling_ae_title)
        return MemorySink(self.memory_limit)

    @staticmethod
    def discard(request: Request) -> None:
        """Release what a request holds (a received file that was not kept)."""
        if isinstance(request.data, IncomingFile):
            request.data.discard()

    def answer_now(self, assoc: Acceptor, request: Request) -> bool:
        """Answer on the loop what needs no executor (C-ECHO, the refusals); True if done."""
        command, context = request.command, request.context
        if command.field not in COMMAND_NAMES:
            assoc.protocol_error(f"unknown DIMSE command field 0x{command.field:04X}", 0)
            self.discard(request)
            return True
        group = self.group_of(context.abstract_syntax)
        if command.field not in self.defined.get(group, frozenset()):
            _log_refused(
                assoc, request, UNRECOGNIZED_OPERATION, "unrecognized operation answered 0x0211"
            )
            send(
                assoc,
                request,
                Response(UNRECOGNIZED_OPERATION, f"{request.name} is not defined here"),
            )
        elif not in_context(request.sop_class_uid, context.abstract_syntax):
            _log_refused(
                assoc, request, SOP_CLASS_NOT_SUPPORTED, "SOP class differs from its context's"
            )
            comment = f"SOP Class UID is not context {context.context_id}'s"
            send(assoc, request, Response(SOP_CLASS_NOT_SUPPORTED, comment))
        elif command.field == c.C_ECHO_RQ:
            send(assoc, request, run_operation(group, on_c_echo, request, assoc.handle))
        else:
            return False
        self.discard(request)
        return True

    async def run(self, assoc: Acceptor, request: Request) -> None:
        """Answer one request (see the module docstring)."""
        if self.answer_now(assoc, request):
            return
        try:
            await self._run(assoc, request)
        except ConnectionError:
            pass  # the association ended while the operation ran: nobody to answer
        except Exception:
            assoc.handle.log.exception("operation failed in the engine", operation=request.name)
        finally:
            self.discard(request)

    async def _run(self, assoc: Acceptor, request: Request) -> None:
        command = request.command
        group = self.group_of(request.context.abstract_syntax)
        loop = asyncio.get_running_loop()
        if command.field == c.C_STORE_RQ:
            # One hand-off to the I/O thread and one back: the thread parses, fsyncs, renames
            # and commits in turn (an fsync started beforehand in another thread overlapped the
            # parse, but its two extra thread wake-ups cost more CPU than the overlap saved).
            store = functools.partial(self._store, group)
            send(assoc, request, await loop.run_in_executor(self.io, store, request, assoc.handle))
        elif (command.field, group) in self._simple:
            answer = functools.partial(_encoded, group, self._simple[(command.field, group)])
            assoc.write_all(await loop.run_in_executor(self.work, answer, request, assoc))
        else:
            port = ThreadPort(assoc, request, loop)

            def send_final(report: StreamReport) -> None:  # in the thread, before finish()
                port.final(final_pdus(assoc, request, report))

            operation = self._streams[(command.field, group)]
            stream = functools.partial(run_stream, group, operation, answer=send_final)
            report = await loop.run_in_executor(self.work, stream, request, assoc.handle, port)
            if not request.answered:  # set by ThreadPort.final once written
                assoc.write_all(port.take_held() + final_pdus(assoc, request, report))

    def _store(self, group: str, request: Request, handle: ClientHandle) -> Response:
        """C-STORE in the I/O executor; a received file that was not kept is gone before the
        peer hears the answer."""
        try:
            return run_operation(group, self.services.storage.on_c_store, request, handle)
        finally:
            self.discard(request)


def _log_refused(assoc: Acceptor, request: Request, status: int, event: str) -> None:
    """Count a request refused before any service saw it as a failed operation; log and audit
    it."""
    handle = assoc.handle
    handle.operation_finished(request.name, failed=True)
    audit.request_not_served(handle, request.name, request.sop_class_uid, status, event)
    handle.log.warning(
        event,
        request=request.name,
        sop_class=sop_class_keyword(request.sop_class_uid),
        context_id=request.context.context_id,
        context_sop_class=sop_class_keyword(request.context.abstract_syntax),
        status=f"0x{status:04X}",
    )


def _encoded(group: str, operation: Operation, request: Request, assoc: Acceptor) -> list[bytes]:
    """Run an N-service operation and encode its response, in the executor's thread."""
    return response_pdus(assoc, request, run_operation(group, operation, request, assoc.handle))


def response_pdus(assoc: Acceptor, request: Request, answer: Response) -> list[bytes]:
    """The PDUs of the response to `request`."""
    data = _encode(answer.dataset, request, assoc)
    command = response(
        request.command,
        answer.status,
        comment=answer.comment,
        has_data_set=data is not None,
        error_id=answer.error_id,
        attribute_tags=answer.attribute_tags,
        affected_sop_instance_uid=answer.affected_sop_instance_uid,
    )
    return list(message_pdus(request.context.context_id, command, data, assoc.peer_max_pdu))


def _encode(dataset: Dataset | None, request: Request, assoc: Acceptor) -> bytes | None:
    if dataset is None:
        return None
    try:
        return encode_dataset(dataset, request.context.transfer_syntax)
    except Exception:
        assoc.handle.log.exception("response data set does not encode; sent without it")
        return None


def send(assoc: Acceptor, request: Request, answer: Response) -> None:
    """Send the response to `request` (on the loop)."""
    assoc.write_all(response_pdus(assoc, request, answer))


def final_pdus(assoc: Acceptor, request: Request, report: StreamReport) -> list[bytes]:
    """The final response of a C-FIND, C-GET or C-MOVE (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.5):
    the counts once sub-operations began, the Failed SOP Instance UID List with a warning,
    a failure of every sub-operation or a cancel."""
    counts = report.sub_operations
    data: bytes | None = None
    if counts is not None and report.status in _FAILED_UID_STATUSES:
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = list(report.failed_uids)
        data = _encode(failed, request, assoc)
    command = response(
        request.command,
        report.status,
        comment=report.comment,
        has_data_set=data is not None,
        counts=counts,
    )
    return list(message_pdus(request.context.context_id, command, data, assoc.peer_max_pdu))
