"""A C-ECHO client, used by `pacsd echo` (health checks) and by tests."""

from __future__ import annotations

from pynetdicom import AE

from pacsd.dicom.sop_classes import VERIFICATION


def send_echo(
    host: str, port: int, calling_ae_title: str, called_ae_title: str, timeout: float
) -> tuple[int | None, str]:
    """One association, one C-ECHO: (status or None, problem description or '')."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            return None, "association rejected"
        return None, "no association (server unreachable or aborted)"
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = getattr(response, "Status", None)
    return (int(status), "") if status is not None else (None, "no C-ECHO response")
