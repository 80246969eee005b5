"""The one place where service outcomes and errors become DIMSE statuses and log lines.

Every DIMSE request goes through here: the policy's second question (may this peer do this?),
then the service; domain errors answer their own status with an Error Comment, anything
unexpected is logged with its traceback and answers Processing Failure (0x0110, PS3.7 C.4) or,
for the streaming operations, Unable to Process (0xC000); and each operation gets exactly one
log line with its status and duration, and its audit record.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from pacsd import audit, metrics
from pacsd.dicom.sop_classes import in_context, sop_class_keyword
from pacsd.dimse.messages import Request
from pacsd.errors import DicomStatusError, NotAuthorized
from pacsd.handle import ClientHandle
from pacsd.policy.engine import allow
from pacsd.services.ports import OperationPort, SubOperationCounts

PROCESSING_FAILURE = 0x0110
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
_NOT_LO_CHARACTERS = re.compile(r"[^\x20-\x5b\x5d-\x7e]")


def error_comment(text: str) -> str:
    """An Error Comment (0000,0902) value: LO, 64 characters, no backslash or control codes."""
    return _NOT_LO_CHARACTERS.sub("?", text)[:64]


@dataclass(frozen=True)
class OperationResult:
    """A handled operation: its status, what was done (for the log), and what to answer."""

    status: int
    size: int = 0
    outcome: str = ""
    stored: bool = False
    # (Study Instance UID, Patient ID) of a stored instance, for the audit trail only: patient
    # data never goes to the service log.
    subject: tuple[str, str] | None = None
    dataset: Dataset | None = None  # an N-service reply's data set (N-GET attributes, ...)
    affected_sop_instance_uid: str = ""  # N-CREATE: the UID pacsd gave the new instance


@dataclass(frozen=True)
class Response:
    """What the engine sends back for a finished non-streaming request."""

    status: int
    comment: str = ""
    dataset: Dataset | None = None
    error_id: int | None = None
    attribute_tags: tuple[int, ...] = ()  # Attribute Identifier List (N-GET/N-SET failures)
    affected_sop_instance_uid: str = ""


Operation = Callable[[Request, ClientHandle], OperationResult]


def _authorize(handle: ClientHandle, policy_operation: str, request: Request) -> None:
    """The policy's second question (STYLE), asked per request: may this peer do this?"""
    destination = request.move_destination.strip() if policy_operation == "move" else None
    sop_class = request.sop_class_uid
    context_sop_class = request.context.abstract_syntax
    if sop_class != context_sop_class and in_context(sop_class, context_sop_class):
        # A member of a Meta SOP Class on the meta class's context (PS3.4 H.3), or UPS Push on
        # a UPS Pull/Watch/Event context (CC.3.1): the rule granted the context's SOP class.
        sop_class = context_sop_class
    permission = allow(handle, policy_operation, sop_class, destination)
    if not permission.allowed:
        handle.log.warning("operation refused by policy", reason=permission.reason)
        if policy_operation == "move" and "destination" in permission.reason:
            # A destination this peer may not use is, to this peer, an unknown one.
            raise MoveDestinationRefused(permission.reason)
        raise NotAuthorized(permission.reason)


class MoveDestinationRefused(DicomStatusError):
    """PS3.4 C.4.2.1.5: Refused: Move Destination unknown (0xA801)."""

    status = MOVE_DESTINATION_UNKNOWN


def run_operation(
    policy_operation: str, operation: Operation, request: Request, handle: ClientHandle
) -> Response:
    """Check the policy, run `operation`, and turn whatever happens into a Response."""
    name = request.name
    handle.operation_started(name)
    started = time.perf_counter()
    result, response = OperationResult(PROCESSING_FAILURE), Response(PROCESSING_FAILURE)
    try:
        _authorize(handle, policy_operation, request)
        result = operation(request, handle)
        response = Response(
            result.status,
            dataset=result.dataset,
            affected_sop_instance_uid=result.affected_sop_instance_uid,
        )
    except DicomStatusError as exc:
        result = OperationResult(exc.status)
        response = Response(
            exc.status, error_comment(exc.comment), None, exc.error_id, tuple(exc.tags)
        )
    except Exception:
        handle.log.exception("operation failed unexpectedly", operation=name)
        result = OperationResult(PROCESSING_FAILURE)
        response = Response(PROCESSING_FAILURE, "processing failure")
    fields: dict[str, Any] = {}
    if name == "C-STORE":
        fields["bytes"] = result.size
    if result.outcome:
        fields["outcome"] = result.outcome
    finish(
        handle, request, started, response.status, response.comment,
        stored=result.stored, size=result.size, subject=result.subject, **fields,
    )  # fmt: skip
    return response


@dataclass
class StreamReport:
    """What a streaming operation (C-FIND, C-GET, C-MOVE) did, filled in as it runs.

    `status` is the final status the peer receives, `fields` extra log fields (matches,
    sub-operation counts).
    """

    status: int = 0x0000
    comment: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    # C-GET / C-MOVE once sub-operations began: the counts and failed UIDs of the final response
    sub_operations: SubOperationCounts | None = None
    failed_uids: list[str] = field(default_factory=list)


StreamOperation = Callable[[Request, ClientHandle, StreamReport, OperationPort], None]


def run_stream(
    policy_operation: str,
    operation: StreamOperation,
    request: Request,
    handle: ClientHandle,
    port: OperationPort,
    answer: Callable[[StreamReport], None] | None = None,
) -> StreamReport:
    """Check the policy and run a streaming operation; its final status is in the report.

    `answer(report)` sends the final response before the operation is counted, audited and
    logged (finish): the peer waits for the response, not for those.
    """
    name = request.name
    handle.operation_started(name)
    started = time.perf_counter()
    report = StreamReport()
    try:
        _authorize(handle, policy_operation, request)
        operation(request, handle, report, port)
    except DicomStatusError as exc:
        report.status, report.comment = exc.status, error_comment(exc.comment)
    except Exception:
        handle.log.exception("operation failed unexpectedly", operation=name)
        report.status, report.comment = UNABLE_TO_PROCESS, "processing failure"
    if answer is not None:
        answer(report)
    finish(handle, request, started, report.status, report.comment, **report.fields)
    return report


def finish(
    handle: ClientHandle,
    request: Request,
    started: float,
    status: int,
    comment: str,
    stored: bool = False,
    size: int = 0,
    subject: tuple[str, str] | None = None,
    **fields: Any,
) -> None:
    """Count a finished DIMSE operation on its handle and in the metrics, audit it, write its
    one log line.

    Success, warnings (0xBxxx) and a cancel (0xFE00) are not failures.
    """
    name = request.name
    seconds = time.perf_counter() - started
    failed = status not in (0x0000, 0xFE00) and not 0xB000 <= status <= 0xBFFF
    handle.operation_finished(name, failed, stored=stored, size=size)
    metrics.operation_finished(name, status, seconds)
    audit.operation_finished(handle, request, name, status, fields, subject)
    log = handle.log.warning if failed else handle.log.info
    log(
        "dimse",
        operation=name,
        sop_class=sop_class_keyword(request.sop_class_uid),
        status=f"0x{status:04X}",
        **fields,
        duration_ms=round(seconds * 1000, 2),
        **({"error_comment": error_comment(comment)} if comment else {}),
    )
