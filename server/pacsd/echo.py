"""A C-ECHO client, used by `pacsd echo` (health checks) and by tests: pacsd's own engine as
association requestor (engine/requestor.py), over plain TCP or DICOM TLS (PS3.15 B.1)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.sop_classes import VERIFICATION
from pacsd.engine.association import Timeouts
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.requestor import AssociationRefused, Proposal, associate
from pacsd.engine.responses import echo_request
from pacsd.engine.sockets import SocketOptions
from pacsd.engine.tls import TlsSetupError, client_context
from pacsd.settings_security import TlsSettings

ECHO_MAX_PDU = 16384
TlsArgs = tuple[ssl.SSLContext, str]  # the client context, the server name to send (SNI)


def send_echo(
    host: str,
    port: int,
    calling_ae_title: str,
    called_ae_title: str,
    timeout: float,
    tls: TlsArgs | None = None,
) -> tuple[int | None, str]:
    """One association, one C-ECHO: (status or None, problem description or '')."""
    return asyncio.run(_echo(host, port, calling_ae_title, called_ae_title, timeout, tls))


def echo_tls(
    tls: TlsSettings,
    host: str,
    server_name: str | None,
    files: dict[str, Path | None] | None = None,
) -> TlsArgs:
    """The TLS context of `pacsd echo`: `network.tls` with the files given instead
    (certificate_file, key_file, ca_file). pacsd presents its certificate when the server asks.

    With `server_name` the server's certificate must chain to ca_file (else the system's CAs)
    and carry that name, as for any peer. Without it (the health check of pacsd's own server,
    reached at 127.0.0.1 or in a container) the name is not checked, and the certificate must
    chain to ca_file or be pacsd's own certificate_file. TlsSetupError names a bad file.
    """
    given = {key: value for key, value in (files or {}).items() if value is not None}
    settings = tls.model_copy(update=given)
    context = client_context(settings)
    if server_name is not None:
        return context, server_name
    context.check_hostname = False
    if settings.certificate_file is not None:
        # Trusting a certificate that is not a CA's needs OpenSSL's partial chain flag.
        try:
            context.load_verify_locations(cafile=str(settings.certificate_file))
        except OSError as exc:  # ssl.SSLError is an OSError
            problem = f"cannot load {settings.certificate_file}: {exc}"
            raise TlsSetupError("certificate_file", problem) from None
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context, host


async def _echo(
    host: str,
    port: int,
    calling_ae_title: str,
    called_ae_title: str,
    timeout: float,
    tls: TlsArgs | None,
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
            host, port, proposal, ReceiveLimits(), timeouts, SocketOptions(), timeout, tls
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
