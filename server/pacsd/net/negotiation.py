"""A-ASSOCIATE-RQ -> policy decision -> this association's contexts, or A-ASSOCIATE-RJ.

Runs in pynetdicom's EVT_REQUESTED, before ACSE negotiates (PYNETDICOM_NOTES.md). pynetdicom
swallows exceptions from that event and would negotiate with the server-level contexts, so this
handler catches everything and rejects (fail closed); the server-level contexts match nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from pacsd import audit
from pacsd.net.contexts import contexts_for
from pacsd.net.handle import ClientHandle, HandleRegistry, NegotiatedContext
from pacsd.net.tls import connection_tls
from pacsd.policy.engine import (
    REJECT_NO_REASON,
    REJECT_TRANSIENT_NO_REASON,
    AssociationRequest,
    Decision,
    Grant,
    Policy,
)
from pacsd.policy.identity import IdentityClaim, IdentityResult, Outcome
from pacsd.policy.limits import AssociationSlots

PolicyProvider = Callable[[], Policy]


class Negotiator:
    """Event handlers that fill the client handle and apply the policy decision."""

    def __init__(self, policy: PolicyProvider, handles: HandleRegistry, max_pdu_size: int) -> None:
        self.policy = policy
        self.handles = handles
        self.slots = AssociationSlots()
        self.max_pdu_size = max_pdu_size

    def on_connection_open(self, event: Event) -> None:
        """EVT_CONN_OPEN: a handle for the new connection; forget handles whose end was missed."""
        self._close_finished()
        peer = event.assoc.requestor
        handle = self.handles.open(event.assoc, str(peer.address), int(peer.port or 0))
        handle.log.debug("connection opened")

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: decide, then set the accepted contexts or reject."""
        assoc = event.assoc
        handle = self.handles.get(assoc)
        try:
            policy = self.policy()  # one configuration for the whole decision, even mid-reload
            if not assoc.requestor.requested_contexts:
                # PS3.8 9.3.2: an A-ASSOCIATE-RQ carries one or more presentation contexts;
                # accepting none would leave an association that can do nothing until it times out.
                self._read_request(assoc, handle, None)
                decision = Decision.reject(REJECT_NO_REASON, "no presentation context proposed")
            else:
                request = self._read_request(assoc, handle, policy)
                decision, handle.slot = self.slots.admit(request, policy)
            handle.decision = decision
            if decision.grant is not None:
                self._apply(assoc, handle, decision.grant)
        except Exception:
            handle.log.exception("policy evaluation failed; rejecting (fail closed)")
            decision = Decision.reject(REJECT_TRANSIENT_NO_REASON, "policy evaluation failed")
            handle.decision = decision
        if not decision.accepted:
            self._reject(assoc, handle, decision)

    def _read_request(
        self, assoc: Association, handle: ClientHandle, policy: Policy | None
    ) -> AssociationRequest:
        """Fill the handle from the A-ASSOCIATE-RQ; with `policy`, verify the user identity."""
        requestor = assoc.requestor
        primitive = requestor.primitive
        assert primitive is not None  # EVT_REQUESTED fires once the request has arrived
        handle.requested(
            calling_ae_title=str(primitive.calling_ae_title).strip(),
            called_ae_title=str(primitive.called_ae_title).strip(),
            thread_ids=(assoc.ident, assoc.dul.ident),
        )
        handle.peer_implementation_class_uid = str(requestor.implementation_class_uid or "")
        handle.peer_implementation_version_name = str(requestor.implementation_version_name or "")
        handle.peer_max_pdu_size = requestor.maximum_length
        # PS3.7 D.3.3.7: verified before any rule is tried (it depends on the identity settings
        # only); the matching rule then says whether the result is used (engine.py).
        identity = policy.identity.verify(_claim(requestor.user_identity)) if policy else None
        if identity is not None:
            _record_identity(handle, identity)
        return AssociationRequest(
            calling_ae_title=handle.calling_ae_title,
            called_ae_title=handle.called_ae_title,
            peer_address=handle.peer_address,
            peer_port=handle.peer_port,
            username=handle.username,
            tls_subject=_tls_subject(assoc, handle),
            identity=identity,
        )

    def _apply(self, assoc: Association, handle: ClientHandle, grant: Grant) -> None:
        acceptor = assoc.acceptor
        acceptor.supported_contexts = list(contexts_for(grant))
        acceptor.maximum_length = grant.offered_pdu_size(self.max_pdu_size)
        handle.local_max_pdu_size = acceptor.maximum_length
        invoked, performed = assoc.requestor.asynchronous_operations
        if grant.async_operations_window > 1 and (invoked, performed) != (1, 1):
            # PS3.7 D.3.3.3: grant at most the rule's window (0 proposed means unlimited). pacsd
            # performs operations one after another; the window lets a peer pipeline requests.
            window = AsynchronousOperationsWindowNegotiation()
            window.maximum_number_operations_invoked = min(
                invoked or grant.async_operations_window, grant.async_operations_window
            )
            window.maximum_number_operations_performed = 1
            acceptor.add_negotiation_item(window)
        request = handle.decision.request if handle.decision else None
        identity = request.identity if request else None
        if grant.user_identity == "not-accepted":
            handle.username, handle.user_verified = None, None  # the sent identity is ignored
        elif identity is not None and identity.server_response() is not None:
            # PS3.7 D.3.3.7.2: the positive response the peer asked for (pynetdicom sends none
            # without an EVT_USER_ID handler, so pacsd adds the A-ASSOCIATE-AC sub-item itself).
            response = UserIdentityNegotiation()
            response.server_response = identity.server_response()
            acceptor.add_negotiation_item(response)

    def _reject(self, assoc: Association, handle: ClientHandle, decision: Decision) -> None:
        rejection = decision.rejection or REJECT_TRANSIENT_NO_REASON
        handle.state = "rejected"
        self._release(handle)
        handle.log.warning(
            "association rejected",
            reason=decision.reason,
            rule=decision.rule,
            rejection=rejection.describe(),
        )
        audit.association_rejected(
            handle, f"{decision.reason} ({rejection.describe()})", decision.rule
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
        assoc.kill()  # without it the socket may close before the A-ASSOCIATE-RJ leaves

    def on_accepted(self, event: Event) -> None:
        """EVT_ACCEPTED: record the negotiated contexts and roles."""
        assoc = event.assoc
        handle = self.handles.get(assoc)
        handle.state = "established"
        handle.contexts = [
            _negotiated(cx) for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts]
        ]
        handle.log.info(
            "association accepted",
            rule=handle.decision.rule if handle.decision else None,
            accepted_contexts=len(handle.accepted_contexts),
            rejected_contexts=len(handle.contexts) - len(handle.accepted_contexts),
            peer_max_pdu=handle.peer_max_pdu_size,
            max_pdu=handle.local_max_pdu_size,
            peer_implementation=handle.peer_implementation_version_name,
        )
        audit.association_accepted(handle)

    def on_rejected(self, event: Event) -> None:
        """EVT_REJECTED: pynetdicom's own rejections (its association limit, ACSE checks)."""
        handle = self.handles.find(event.assoc)
        if handle is None:
            return
        handle.state = "rejected"
        self._release(handle)
        handle.log.warning("association rejected", reason="pynetdicom: local limit or ACSE check")
        audit.association_rejected(handle, "pynetdicom: local limit or ACSE check", None)

    def on_aborted(self, event: Event) -> None:
        """EVT_ABORTED; for an abort by the peer it fires after EVT_CONN_CLOSE: nothing to do."""
        handle = self.handles.find(event.assoc)
        if handle is not None:
            handle.state = "aborted"

    def on_data_received(self, event: Event) -> None:
        """EVT_DATA_RECV: one whole PDU read from the peer."""
        handle = self.handles.find(event.assoc)
        if handle is not None:
            handle.data_received(len(event.data))
            _note_release_reply(handle, event.data)

    def on_data_sent(self, event: Event) -> None:
        """EVT_DATA_SENT: one whole PDU written to the peer."""
        handle = self.handles.find(event.assoc)
        if handle is not None:
            handle.data_sent(len(event.data))
            _note_release_reply(handle, event.data)

    def on_connection_close(self, event: Event) -> None:
        """EVT_CONN_CLOSE: give back the slot, log the handle's final line, forget it."""
        handle = self.handles.close(event.assoc)
        if handle is not None:
            if handle.state == "established":
                # Closed without A-RELEASE: the peer sent an A-ABORT (PS3.8 7.3) or dropped the
                # connection (A-P-ABORT, PS3.8 7.4); pynetdicom fires EVT_ABORTED only later.
                handle.state = "aborted"
            self._finish(handle)

    def _close_finished(self) -> None:
        def finished(key: object) -> bool:
            assoc = cast(Association, key)
            return assoc.ident is not None and not assoc.is_alive()

        for handle in self.handles.close_finished(finished):
            self._finish(handle, missed=True)

    def _release(self, handle: ClientHandle) -> None:
        slot, handle.slot = handle.slot, None
        if slot is not None:
            self.slots.release(slot)

    def _finish(self, handle: ClientHandle, missed: bool = False) -> None:
        self._release(handle)
        counters = handle.counters
        handle.log.info(
            "association closed",
            state=handle.state,
            duration_s=round(handle.duration_s, 3),
            operations=counters.operations,
            failures=counters.failures,
            instances_stored=counters.instances_stored,
            bytes_received=counters.bytes_received,
            bytes_sent=counters.bytes_sent,
            **({"close_event_missed": True} if missed else {}),
        )
        audit.association_closed(handle)


def _negotiated(context: PresentationContext) -> NegotiatedContext:
    return NegotiatedContext(
        context_id=int(context.context_id or 0),
        abstract_syntax=str(context.abstract_syntax),
        transfer_syntax=str(context.transfer_syntax[0]) if context.transfer_syntax else "",
        result=int(context.result if context.result is not None else 0),
        pacsd_scu=bool(context.as_scu),
        pacsd_scp=bool(context.as_scp),
    )


def _claim(item: UserIdentityNegotiation | None) -> IdentityClaim | None:
    """The User Identity sub-item of the A-ASSOCIATE-RQ as plain values (PS3.7 D.3.3.7.1)."""
    if item is None or item.user_identity_type is None:
        return None
    return IdentityClaim(
        identity_type=int(item.user_identity_type),
        primary_field=bytes(item.primary_field or b""),
        secondary_field=bytes(item.secondary_field or b""),
        positive_response_requested=bool(item.positive_response_requested),
    )


def _record_identity(handle: ClientHandle, identity: IdentityResult) -> None:
    """Put the verdict on the handle and log it: username and type only, never a secret."""
    if identity.outcome is Outcome.NONE:
        return
    handle.user_identity_type = identity.identity_type
    handle.user_verified = identity.verified
    handle.username = identity.username
    if identity.verified:
        handle.log.info(
            "user identity verified",
            username=identity.username,
            user_identity_type=identity.identity_type,
        )
    else:
        handle.log.info(
            "user identity not verified",
            user_identity_type=identity.identity_type,
            reason=identity.reason,
        )


def _tls_subject(assoc: Association, handle: ClientHandle) -> str | None:
    """The verified client certificate's subject (RFC 4514); the handle keeps it and the TLS
    version (both None on the plain listener)."""
    handle.tls_subject, handle.tls_version = connection_tls(assoc)
    return handle.tls_subject


def _note_release_reply(handle: ClientHandle, pdu: bytes) -> None:
    """An A-RELEASE-RP (PDU type 0x06, PS3.8 9.3.7) sent or received ends the association by
    release. Both events fire on the DUL's thread before it can see the connection close, where
    EVT_RELEASED fires on the association's thread after the reply is sent: with a peer that
    closes at once (as it may, PS3.8 7.2), EVT_CONN_CLOSE could come first and log the release
    as an abort. So the state comes from the reply, and EVT_RELEASED is not needed."""
    if pdu[:1] == b"\x06" and handle.state == "established":
        handle.state = "released"
