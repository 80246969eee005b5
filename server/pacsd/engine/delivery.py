"""Storage Commitment reports put on the wire for the commitment worker's thread.

PS3.4 J.3.3: the N-EVENT-REPORT goes on the requester's association while it is open (pacsd
is the SCP of its Storage Commitment context and sends the request between the requester's
own; the response comes back by its Message ID), else on a new association to the requester's
address from the AE table, proposing the SCP role for pacsd (PS3.7 D.3.3.4).
"""

from __future__ import annotations

import asyncio

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dimse.commands import N_ACTION_RQ
from pacsd.dimse.messages import AcceptedContext, encode_dataset
from pacsd.engine.association import Association
from pacsd.engine.core import Engine
from pacsd.engine.pdu import RoleSelection
from pacsd.engine.requestor import AssociationRefused
from pacsd.engine.responses import event_report_request
from pacsd.services.commitment import PUSH_MODEL, WELL_KNOWN_INSTANCE, DeliveryFailed
from pacsd.settings import Peer

MARGIN_S = 5.0


class EngineDelivery:
    """services.commitment.ReportDelivery on an engine running on `loop`."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def _timeout(self) -> float:
        timeouts = self.engine.timeouts
        return timeouts.acse * 2 + timeouts.dimse + self.engine.connect_timeout + MARGIN_S

    def on_same_association(self, association_id: str, report: Dataset, event_type: int) -> bool:
        coroutine = self._same(association_id, report, event_type)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self._timeout())

    def on_new_association(self, peer: Peer, report: Dataset, event_type: int) -> None:
        coroutine = self._new(peer, report, event_type)
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self._timeout())

    async def _same(self, association_id: str, report: Dataset, event_type: int) -> bool:
        acceptor = self.engine.live.get(association_id)
        if acceptor is None or acceptor.state != "established":
            return False
        context = _reporting_context(acceptor)
        if context is None:
            return False
        # The worker may wake before the N-ACTION response is on the wire: the report
        # follows its request's response (PS3.4 J.3.3), so wait for running N-ACTIONs first.
        running = acceptor.running.values()
        actions = [task for request, task in running if request.command.field == N_ACTION_RQ]
        if actions:
            await asyncio.wait(actions, timeout=self.engine.timeouts.dimse)
        try:
            return await _send(acceptor, context, report, event_type) == 0x0000
        except (TimeoutError, ConnectionError):
            return False

    async def _new(self, peer: Peer, report: Dataset, event_type: int) -> None:
        syntaxes = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
        role = RoleSelection(PUSH_MODEL, scu_role=False, scp_role=True)
        try:
            requestor = await self.engine.connect(peer, [(PUSH_MODEL, syntaxes)], [role])
        except AssociationRefused as exc:
            raise DeliveryFailed(f"no association with {peer.ae_title}: {exc}") from None
        try:
            context = _reporting_context(requestor)
            if context is None:
                raise DeliveryFailed(f"{peer.ae_title} did not accept pacsd as commitment SCP")
            try:
                status = await _send(requestor, context, report, event_type)
            except (TimeoutError, ConnectionError):
                raise DeliveryFailed(f"{peer.ae_title} did not answer the report") from None
            if status != 0x0000:
                raise DeliveryFailed(f"{peer.ae_title} did not acknowledge the report")
        finally:
            await requestor.release()


def _reporting_context(assoc: Association) -> AcceptedContext | None:
    return next(
        (
            context
            for context in assoc.contexts.values()
            if context.abstract_syntax == PUSH_MODEL and context.pacsd_scp
        ),
        None,
    )


async def _send(
    assoc: Association, context: AcceptedContext, report: Dataset, event_type: int
) -> int:
    data = encode_dataset(report, context.transfer_syntax)
    message_id = assoc.next_message_id()
    command = event_report_request(PUSH_MODEL, WELL_KNOWN_INSTANCE, event_type, message_id)
    reply, _data = await assoc.send_request(context.context_id, command, message_id, data)
    return reply.status if reply.status is not None else 0xFFFF
