"""A-ASSOCIATE-RQ -> policy decision -> this association's contexts, or A-ASSOCIATE-RJ.

Runs in pynetdicom's EVT_REQUESTED, before ACSE negotiates (PYNETDICOM_NOTES.md). pynetdicom
swallows exceptions from that event and would negotiate with the server-level contexts, so this
handler catches everything and rejects (fail closed); the server-level contexts match nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pynetdicom.association import Association
from pynetdicom.events import Event

from pacsd.net.contexts import contexts_for
from pacsd.net.handle import AcceptedContext, ClientHandle, HandleRegistry
from pacsd.policy.engine import (
    REJECT_TRANSIENT_NO_REASON,
    AssociationRequest,
    Decision,
    decide,
)
from pacsd.settings import PolicyRule

RulesProvider = Callable[[], Sequence[PolicyRule]]


class Negotiator:
    """Event handlers that fill the client handle and apply the policy decision."""

    def __init__(self, rules: RulesProvider, handles: HandleRegistry) -> None:
        self.rules = rules
        self.handles = handles

    def on_connection_open(self, event: Event) -> None:
        """EVT_CONN_OPEN: a handle for the new connection."""
        peer = event.assoc.requestor
        handle = self.handles.open(event.assoc, str(peer.address), int(peer.port or 0))
        handle.log.debug("connection opened")

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: decide, then set the accepted contexts or reject."""
        assoc = event.assoc
        handle = self.handles.get(assoc)
        try:
            decision = self._decide(assoc, handle)
            if decision.accepted:
                assoc.acceptor.supported_contexts = list(contexts_for(decision.services))
        except Exception:
            handle.log.exception("policy evaluation failed; rejecting (fail closed)")
            decision = Decision.reject(REJECT_TRANSIENT_NO_REASON, "policy evaluation failed")
        handle.decision = decision
        if not decision.accepted:
            self._reject(assoc, handle, decision)

    def _decide(self, assoc: Association, handle: ClientHandle) -> Decision:
        primitive = assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED fires once the request has arrived
        handle.requested(
            calling_ae_title=str(primitive.calling_ae_title).strip(),
            called_ae_title=str(primitive.called_ae_title).strip(),
            thread_ids=(assoc.ident, assoc.dul.ident),
        )
        request = AssociationRequest(
            calling_ae_title=handle.calling_ae_title,
            called_ae_title=handle.called_ae_title,
            peer_address=handle.peer_address,
            peer_port=handle.peer_port,
        )
        return decide(request, self.rules())

    def _reject(self, assoc: Association, handle: ClientHandle, decision: Decision) -> None:
        rejection = decision.rejection or REJECT_TRANSIENT_NO_REASON
        handle.state = "rejected"
        handle.log.warning(
            "association rejected", reason=decision.reason, rejection=rejection.describe()
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
        assoc.kill()  # without it the socket may close before the A-ASSOCIATE-RJ leaves

    def on_accepted(self, event: Event) -> None:
        """EVT_ACCEPTED: record the negotiated contexts and roles."""
        handle = self.handles.get(event.assoc)
        handle.state = "established"
        handle.accepted_contexts = [
            AcceptedContext(
                context_id=int(cx.context_id or 0),
                abstract_syntax=str(cx.abstract_syntax),
                transfer_syntax=str(cx.transfer_syntax[0]),
                scu_role=bool(cx.as_scu),
                scp_role=bool(cx.as_scp),
            )
            for cx in event.assoc.accepted_contexts
        ]
        rule = handle.decision.rule if handle.decision else None
        handle.log.info(
            "association accepted",
            rule=rule,
            accepted_contexts=len(handle.accepted_contexts),
            rejected_contexts=len(event.assoc.rejected_contexts),
            max_pdu=event.assoc.requestor.maximum_length,
        )

    def on_rejected(self, event: Event) -> None:
        """EVT_REJECTED: pynetdicom's own rejections (e.g. too many associations)."""
        handle = self.handles.get(event.assoc)
        handle.state = "rejected"
        handle.log.warning("association rejected", reason="local limit exceeded or ACSE check")

    def on_released(self, event: Event) -> None:
        """EVT_RELEASED."""
        self.handles.get(event.assoc).state = "released"

    def on_aborted(self, event: Event) -> None:
        """EVT_ABORTED."""
        self.handles.get(event.assoc).state = "aborted"

    def on_connection_close(self, event: Event) -> None:
        """EVT_CONN_CLOSE: the handle's final line, then forget it."""
        handle = self.handles.close(event.assoc)
        if handle is None:
            return
        counters = handle.counters
        handle.log.info(
            "association closed",
            state=handle.state,
            duration_s=round(handle.duration_s, 3),
            operations=counters.operations,
            failures=counters.failures,
            instances_stored=counters.instances_stored,
            bytes_received=counters.bytes_received,
        )
