"""A C-ECHO client, used by `pacsd echo` (health checks) and by tests: pacsd's own engine as
association requestor (engine/requestor.py)."""

from __future__ import annotations

import asyncio

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.sop_classes import VERIFICATION
from pacsd.engine.association import Timeouts
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.requestor import AssociationRefused, Proposal, associate
from pacsd.engine.responses import echo_request
from pacsd.engine.sockets import SocketOptions

ECHO_MAX_PDU = 16384


def send_echo(
    host: str, port: int, calling_ae_title: str, called_ae_title: str, timeout: float
) -> tuple[int | None, str]:
    """One association, one C-ECHO: (status or None, problem description or '')."""
    return asyncio.run(_echo(host, port, calling_ae_title, called_ae_title, timeout))


async def _echo(
    host: str, port: int, calling_ae_title: str, called_ae_title: str, timeout: float
) -> tuple[int | None, str]:
    proposal = Proposal(
        calling_ae_title,
        called_ae_title,
        [(VERIFICATION, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
        max_pdu=ECHO_MAX_PDU,
    )
    timeouts = Timeouts(timeout, timeout, timeout)
    try:
        assoc = await associate(
            host, port, proposal, ReceiveLimits(), timeouts, SocketOptions(), timeout
        )
    except AssociationRefused as exc:
        reason = str(exc)
        if reason.startswith("rejected"):
            return None, f"association {reason}"
        return None, f"no association ({reason})"
    try:
        context = next(iter(assoc.contexts.values()), None)
        if context is None:
            return None, "Verification not accepted"
        message_id = assoc.next_message_id()
        try:
            reply, _ = await assoc.send_request(
                context.context_id, echo_request(message_id), message_id, None
            )
        except (TimeoutError, ConnectionError):
            return None, "no C-ECHO response"
    finally:
        await assoc.release()
    return (reply.status, "") if reply.status is not None else (None, "no C-ECHO response")
