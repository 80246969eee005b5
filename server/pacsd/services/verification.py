"""Verification Service Class (PS3.4 Annex A): C-ECHO."""

from __future__ import annotations

from pacsd.dimse.messages import Request
from pacsd.handle import ClientHandle
from pacsd.services.guard import OperationResult


def on_c_echo(request: Request, handle: ClientHandle) -> OperationResult:
    """PS3.7 9.3.5: C-ECHO always succeeds on an established association."""
    return OperationResult(status=0x0000)
