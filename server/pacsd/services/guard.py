"""The one place where service outcomes and errors become DIMSE responses and log lines.

Every DIMSE handler is wrapped here: domain errors answer their own status with an Error
Comment, anything unexpected is logged with its traceback and answers Processing Failure
(0x0110, PS3.7 C.4), and each operation gets exactly one log line with its status and duration.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event

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


Operation = Callable[[Event, ClientHandle], OperationResult]
HandleLookup = Callable[[Event], ClientHandle]


def error_comment(text: str) -> str:
    """An Error Comment (0000,0902) value: LO, 64 characters, no backslash or control codes."""
    return _NOT_LO_CHARACTERS.sub("?", text)[:64]


def _response(status: int, comment: str) -> Dataset:
    response = Dataset()
    response.Status = status
    if comment:
        response.ErrorComment = error_comment(comment)
    return response


def _sop_class_uid(event: Event) -> str:
    return str(getattr(event.request, "AffectedSOPClassUID", "") or "")


def _sop_class_name(event: Event) -> str:
    uid = UID(_sop_class_uid(event))
    return uid.keyword or str(uid)


def _authorize(handle: ClientHandle, policy_operation: str, event: Event) -> None:
    """The policy's second question (PS: STYLE), asked per request: may this peer do this?"""
    permission = allow(handle, policy_operation, _sop_class_uid(event))
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
        failed = result.status not in (0x0000,) and not 0xB000 <= result.status <= 0xBFFF
        handle.operation_finished(operation_name, failed, stored=result.stored, size=result.size)
        log = handle.log.warning if failed else handle.log.info
        log(
            "dimse",
            operation=operation_name,
            sop_class=_sop_class_name(event),
            status=f"0x{result.status:04X}",
            bytes=result.size,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **({"outcome": result.outcome} if result.outcome else {}),
            **({"error_comment": error_comment(comment)} if comment else {}),
        )
        return _response(result.status, comment)

    return handler
