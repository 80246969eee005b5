"""The one place where service outcomes and errors become DIMSE responses and log lines.

Every DIMSE handler is wrapped here: domain errors answer their own status with an Error
Comment, anything unexpected is logged with its traceback and answers Processing Failure
(0x0110, PS3.7 C.4), and each operation gets exactly one log line with its status and duration.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event

from pacsd import audit
from pacsd.errors import DicomStatusError, NotAuthorized
from pacsd.net.handle import ClientHandle
from pacsd.policy.engine import allow

PROCESSING_FAILURE = 0x0110
_NOT_LO_CHARACTERS = re.compile(r"[^\x20-\x5b\x5d-\x7e]")


@dataclass(frozen=True)
class OperationResult:
    """A handled operation: its status, data set bytes, and what was done (for the log)."""

    status: int
    size: int = 0
    outcome: str = ""
    stored: bool = False
    # (Study Instance UID, Patient ID) of a stored instance, for the audit trail only: patient
    # data never goes to the service log.
    subject: tuple[str, str] | None = None


Operation = Callable[[Event, ClientHandle], OperationResult]
HandleLookup = Callable[[Event], ClientHandle]


def error_comment(text: str) -> str:
    """An Error Comment (0000,0902) value: LO, 64 characters, no backslash or control codes."""
    return _NOT_LO_CHARACTERS.sub("?", text)[:64]


def status_dataset(status: int, comment: str = "") -> Dataset:
    response = Dataset()
    response.Status = status
    if comment:
        response.ErrorComment = error_comment(comment)
    return response


def _sop_class_uid(event: Event) -> str:
    request = event.request
    uid = getattr(request, "AffectedSOPClassUID", None) or getattr(
        request, "RequestedSOPClassUID", None
    )
    return str(uid or "")


def _sop_class_name(event: Event) -> str:
    uid = UID(_sop_class_uid(event))
    return uid.keyword or str(uid)


def _authorize(handle: ClientHandle, policy_operation: str, event: Event) -> None:
    """The policy's second question (PS: STYLE), asked per request: may this peer do this?"""
    destination = None
    if policy_operation == "move":
        destination = str(getattr(event.request, "MoveDestination", "") or "").strip()
    permission = allow(handle, policy_operation, _sop_class_uid(event), destination)
    if not permission.allowed:
        handle.log.warning("operation refused by policy", reason=permission.reason)
        raise NotAuthorized(permission.reason)


def guarded(
    operation_name: str, policy_operation: str, operation: Operation, handle_of: HandleLookup
) -> Callable[[Event], Dataset]:
    """A pynetdicom handler that checks the policy, runs `operation`, and never raises."""

    def handler(event: Event) -> Dataset:
        handle = handle_of(event)
        handle.operation_started(operation_name)
        started = time.perf_counter()
        comment = ""
        try:
            _authorize(handle, policy_operation, event)
            result = operation(event, handle)
        except DicomStatusError as exc:
            result, comment = OperationResult(exc.status), exc.comment
        except Exception:
            handle.log.exception("operation failed unexpectedly", operation=operation_name)
            result, comment = OperationResult(PROCESSING_FAILURE), "processing failure"
        _finish(
            handle,
            event,
            operation_name,
            started,
            result.status,
            comment,
            stored=result.stored,
            size=result.size,
            subject=result.subject,
            bytes=result.size,
            **({"outcome": result.outcome} if result.outcome else {}),
        )
        return status_dataset(result.status, comment)

    return handler


NormalizedResult = tuple[int, Dataset | None]
NormalizedOperation = Callable[[Event, ClientHandle], NormalizedResult]


def guarded_normalized(
    operation_name: str,
    policy_operation: str,
    operation: NormalizedOperation,
    handle_of: HandleLookup,
) -> Callable[[Event], tuple[Dataset, Dataset | None]]:
    """A pynetdicom N-service handler: policy, then `operation` -> (status, data set).

    A DicomStatusError becomes the failure response with its Error Comment, and its Error ID
    and offending tags when it has them (`error_id`, `tags`: PS3.7 C.4 Attribute Identifier
    List, which pynetdicom sends for N-GET and N-SET responses only).
    """

    def handler(event: Event) -> tuple[Dataset, Dataset | None]:
        handle = handle_of(event)
        handle.operation_started(operation_name)
        started = time.perf_counter()
        comment, dataset, response = "", None, Dataset()
        try:
            _authorize(handle, policy_operation, event)
            status, dataset = operation(event, handle)
            response = status_dataset(status)
        except DicomStatusError as exc:
            status, comment = exc.status, exc.comment
            response = _failure(exc, operation_name)
        except Exception:
            handle.log.exception("operation failed unexpectedly", operation=operation_name)
            status, comment = PROCESSING_FAILURE, "processing failure"
            response = status_dataset(status, comment)
        _finish(handle, event, operation_name, started, status, comment)
        return response, dataset

    return handler


def _failure(exc: DicomStatusError, operation_name: str) -> Dataset:
    response = status_dataset(exc.status, exc.comment)
    if exc.error_id is not None:
        response.ErrorID = exc.error_id
    if exc.tags and operation_name in ("N-SET", "N-GET"):
        response.AttributeIdentifierList = list(exc.tags)
    return response


def _finish(
    handle: ClientHandle,
    event: Event,
    operation_name: str,
    started: float,
    status: int,
    comment: str,
    stored: bool = False,
    size: int = 0,
    subject: tuple[str, str] | None = None,
    **fields: Any,
) -> None:
    """Count a finished DIMSE operation on its handle and write its one canonical log line.

    Success, warnings (0xBxxx) and a cancel (0xFE00) are not failures.
    """
    failed = status not in (0x0000, 0xFE00) and not 0xB000 <= status <= 0xBFFF
    handle.operation_finished(operation_name, failed, stored=stored, size=size)
    audit.operation_finished(handle, event, operation_name, status, fields, subject)
    log = handle.log.warning if failed else handle.log.info
    log(
        "dimse",
        operation=operation_name,
        sop_class=_sop_class_name(event),
        status=f"0x{status:04X}",
        **fields,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        **({"error_comment": error_comment(comment)} if comment else {}),
    )


@dataclass
class StreamReport:
    """What a streaming operation (C-FIND, C-GET, C-MOVE) did, filled in as it runs.

    `started_stream` turns True once the service has made the yields pynetdicom needs before
    statuses (C-GET: the count; C-MOVE: destination and count); `status` is the final status
    the peer receives, `fields` extra log fields (matches, sub-operation counts).
    """

    status: int = 0x0000
    comment: str = ""
    started_stream: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


StreamOperation = Callable[[Event, ClientHandle, StreamReport], Iterator[Any]]
Refusal = Callable[[StreamReport, int, str], Iterator[Any]]


def refuse_find(report: StreamReport, status: int, comment: str) -> Iterator[Any]:
    """C-FIND: a failure is one final response."""
    yield status_dataset(status, comment), None


def refuse_get(report: StreamReport, status: int, comment: str) -> Iterator[Any]:
    """C-GET: pynetdicom wants the sub-operation count first; a failure follows it."""
    if not report.started_stream:
        yield 1  # pynetdicom answers 0 sub-operations with Success, so announce one
    yield status_dataset(status, comment), None


def refuse_move(report: StreamReport, status: int, comment: str) -> Iterator[Any]:
    """C-MOVE: before the destination, pynetdicom's only refusal is 0xA801 (PS3.4 C.4.2.1.5).

    A policy refusal therefore answers "Move Destination unknown" and pacsd's log says why; any
    other error before streaming is raised, which pynetdicom answers with 0xC514 (unable to
    process).
    """
    if report.started_stream:
        yield status_dataset(status, comment), None
        return
    if status in (NotAuthorized.status, MOVE_DESTINATION_UNKNOWN):
        report.status = MOVE_DESTINATION_UNKNOWN
        yield None, None
        return
    report.status = 0xC514
    raise RuntimeError(comment)


MOVE_DESTINATION_UNKNOWN = 0xA801


def guarded_stream(
    operation_name: str,
    policy_operation: str,
    operation: StreamOperation,
    handle_of: HandleLookup,
    refusal: Refusal,
) -> Callable[[Event], Iterator[Any]]:
    """A pynetdicom generator handler that checks the policy and maps errors to statuses."""

    def handler(event: Event) -> Iterator[Any]:
        handle = handle_of(event)
        handle.operation_started(operation_name)
        started = time.perf_counter()
        report = StreamReport()
        try:
            _authorize(handle, policy_operation, event)
            yield from operation(event, handle, report)
        except DicomStatusError as exc:
            report.status, report.comment = exc.status, exc.comment
            yield from refusal(report, exc.status, exc.comment)
        except Exception:
            handle.log.exception("operation failed unexpectedly", operation=operation_name)
            report.status, report.comment = UNABLE_TO_PROCESS, "processing failure"
            yield from refusal(report, UNABLE_TO_PROCESS, "processing failure")
        finally:
            _finish(
                handle, event, operation_name, started, report.status, report.comment,
                **report.fields,
            )  # fmt: skip

    return handler


UNABLE_TO_PROCESS = 0xC000
