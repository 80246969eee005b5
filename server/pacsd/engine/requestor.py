"""An association pacsd asks for: C-MOVE sub-associations, storage commitment reports, echo.

`associate` connects (TCP, or DICOM TLS to a peer marked `tls`), sends the A-ASSOCIATE-RQ and
waits for the answer within the ACSE timeout (PS3.8 Sta4, Sta5). The accepted contexts carry
pacsd's roles: by default the requestor is the SCU; where pacsd proposed an SCP/SCU role
selection item, the acceptor's reply decides (PS3.7 D.3.3.4). `release` sends A-RELEASE-RQ
and waits for the A-RELEASE-RP (Sta7); a peer that does not answer is aborted.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from pacsd import metrics
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsd.dimse.commands import Command
from pacsd.dimse.messages import AcceptedContext
from pacsd.engine import pdu as pdus
from pacsd.engine.association import Association, Timeouts
from pacsd.engine.dimse import message_pdus
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.responses import response
from pacsd.engine.sockets import SocketOptions
from pacsd.handle import ClientHandle

UNRECOGNIZED_OPERATION = 0x0211


class AssociationRefused(Exception):
    """The peer rejected the association, aborted it, or never answered."""


@dataclass(frozen=True)
class Proposal:
    """What pacsd asks a peer for."""

    calling_ae_title: str
    called_ae_title: str
    contexts: Sequence[tuple[str, Sequence[str]]]  # abstract syntax, transfer syntaxes
    roles: Sequence[pdus.RoleSelection] = ()
    max_pdu: int = 0

    def request(self) -> pdus.AssociateRequest:
        """The A-ASSOCIATE-RQ (context IDs 1, 3, 5, ... in order, PS3.8 9.3.2.2)."""
        contexts = tuple(
            pdus.ProposedContext(2 * index + 1, abstract, tuple(syntaxes))
            for index, (abstract, syntaxes) in enumerate(self.contexts)
        )
        user = pdus.UserInformation(
            maximum_length=self.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=tuple(self.roles),
        )
        return pdus.AssociateRequest(
            self.called_ae_title.encode("ascii", "replace"),
            self.calling_ae_title.encode("ascii", "replace"),
            pdus.APPLICATION_CONTEXT_NAME,
            contexts,
            user,
        )


class Requestor(Association):
    """pacsd's side of an association it requested."""

    def __init__(
        self,
        handle: ClientHandle,
        limits: ReceiveLimits,
        timeouts: Timeouts,
        proposal: Proposal,
        options: SocketOptions,
    ) -> None:
        super().__init__(handle, limits, timeouts)
        self.proposal = proposal
        self.request = proposal.request()
        self.options = options
        self.local_max_pdu = proposal.max_pdu
        self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.options.apply(transport.get_extra_info("socket"))
        self.write(pdus.encode_associate_request(self.request))
        self.state = "awaiting-accept"
        self.start_artim(self.timeouts.acse)

    def on_pdu(self, pdu_type: int, body: bytes) -> None:
        if self.state == "awaiting-accept" and pdu_type == pdus.A_ASSOCIATE_AC:
            self.stop_artim()
            self._accepted(pdus.decode_associate_accept(body))
        elif self.state == "awaiting-accept" and pdu_type == pdus.A_ASSOCIATE_RJ:
            reject = pdus.decode_associate_reject(body)
            self._refused(
                f"rejected (result {reject.result}, source {reject.source}, reason {reject.reason})"
            )
            self.close_transport()
        elif self.state == "releasing" and pdu_type == pdus.A_RELEASE_RP:
            self.handle.state = "released"
            self.close_transport()
        elif self.state in ("established", "releasing") and pdu_type == pdus.A_RELEASE_RQ:
            # The peer releases (or both do at once, PS3.8 Sta9-Sta12): answer and close.
            self.write(pdus.RELEASE_RP)
            self.handle.state = "released"
            self.finish_and_close()
        else:
            name = pdus.PDU_NAMES.get(pdu_type, hex(pdu_type))
            self.protocol_error(
                f"unexpected {name} in state {self.state}", pdus.ABORT_REASON_UNEXPECTED_PDU
            )

    def _accepted(self, accept: pdus.AssociateAccept) -> None:
        proposed = {context.context_id: context for context in self.request.contexts}
        proposed_roles = {role.sop_class_uid for role in self.proposal.roles}
        replies = {role.sop_class_uid: role for role in accept.user.roles}
        contexts: dict[int, AcceptedContext] = {}
        for result in accept.contexts:
            context = proposed.get(result.context_id)
            if result.result != 0 or context is None:
                continue
            uid = context.abstract_syntax
            reply = replies.get(uid) if uid in proposed_roles else None
            scu, scp = (reply.scu_role, reply.scp_role) if reply is not None else (True, False)
            contexts[result.context_id] = AcceptedContext(
                result.context_id, uid, result.transfer_syntax, pacsd_scu=scu, pacsd_scp=scp
            )
        self.contexts = contexts
        self.peer_max_pdu = accept.user.maximum_length or 0
        self.state = "established"
        self.handle.state = "established"
        self.start_idle_timer()
        if not self.accepted.done():
            self.accepted.set_result(None)

    def _refused(self, reason: str) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(AssociationRefused(reason))

    def on_request(self, command: Command, context: AcceptedContext, data: object) -> None:
        """PS3.7 C.5.22: pacsd serves nothing on an association it requested."""
        self.handle.log.warning(
            "request on an association pacsd requested answered 0x0211",
            command_field=f"0x{command.field:04X}",
        )
        answer = response(command, UNRECOGNIZED_OPERATION)
        self.write_all(list(message_pdus(context.context_id, answer, None, self.peer_max_pdu)))

    def ended(self, previous_state: str) -> None:
        if self.handle.state == "established":
            self.handle.state = "aborted"
        counters = self.handle.counters
        metrics.connection_ended(False, counters.bytes_received, counters.bytes_sent)
        self._refused(f"connection closed ({previous_state})")

    async def release(self) -> None:
        """A-RELEASE-RQ, then wait (ACSE timeout) for the reply and the close; abort if not."""
        if self.state != "established":
            self.close_transport()
            return
        self.state = "releasing"
        self.write(pdus.RELEASE_RQ)
        try:
            await asyncio.wait_for(self.wait_closed(), self.timeouts.acse)
        except TimeoutError:
            self.handle.log.warning("no A-RELEASE-RP in time; aborting")
            self.state = "established"
            self.abort(pdus.ABORT_SOURCE_USER, 0)


async def associate(
    host: str,
    port: int,
    proposal: Proposal,
    limits: ReceiveLimits,
    timeouts: Timeouts,
    options: SocketOptions,
    connect_timeout: float,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> Requestor:
    """Open an association to `host`:`port` (AssociationRefused when it is not accepted)."""
    loop = asyncio.get_running_loop()
    handle = ClientHandle.connect(host, port)
    handle.requested(proposal.calling_ae_title, proposal.called_ae_title)

    def factory() -> Requestor:
        return Requestor(handle, limits, timeouts, proposal, options)

    context, server_hostname = tls if tls is not None else (None, None)
    try:
        _transport, protocol = await asyncio.wait_for(
            loop.create_connection(
                factory, host, port, ssl=context, server_hostname=server_hostname
            ),
            connect_timeout + (timeouts.acse if context is not None else 0),
        )
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise AssociationRefused(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        await asyncio.wait_for(asyncio.shield(protocol.accepted), timeouts.acse + 1)
    except TimeoutError:
        protocol.close_transport()
        raise AssociationRefused(f"no answer from {host}:{port} within the ACSE timeout") from None
    except AssociationRefused:
        protocol.close_transport()
        raise
    return protocol
