"""An association a peer asked for: negotiation, the requests it sends, release.

The A-ASSOCIATE-RQ is decided by the policy (engine/negotiation.py; off the loop when a
password must be hashed). Once established, each request message becomes an operation
(engine/operations.py) run as a task: up to the negotiated asynchronous operations window at
once (PS3.7 D.3.3.3), the others queued in order; a C-CANCEL marks its operation wherever it
is. An A-RELEASE-RQ is answered once the running operations have sent their last response
(`answered`), not once they have also been audited and logged; the association's own
"association closed" line and audit record then wait for those, so that its lines keep their
order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from pacsd import audit, metrics
from pacsd.dimse.commands import C_CANCEL_RQ, Command
from pacsd.dimse.messages import AcceptedContext, Request
from pacsd.engine import pdu as pdus
from pacsd.engine.association import TRACE, Association, peer_of
from pacsd.engine.dimse import DataSink
from pacsd.engine.negotiation import Accepted, read_request
from pacsd.engine.tls import peer_subject
from pacsd.handle import ClientHandle
from pacsd.policy.engine import REJECT_TRANSIENT_NO_REASON, Decision, Rejection

if TYPE_CHECKING:
    from pacsd.engine.core import Engine

# PS3.8 Table 9-21: rejected-permanent, source ACSE, protocol version not supported.
REJECT_PROTOCOL_VERSION = Rejection(1, 2, 2)
# Requests queued beyond the window before pacsd stops reading the connection (back-pressure).
QUEUE_SLACK = 4
# What the framer says of a PROXY protocol header ("PROXY ..." or "\r\n\r\n..."): no PDU.
PROXY_HEADER_ERRORS = frozenset({"unknown PDU type 0x50", "unknown PDU type 0x0D"})


class Acceptor(Association):
    """The engine's side of one accepted connection (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        admitted: tuple[str, int, int] | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(ClientHandle.connect("unknown", 0), engine.limits, engine.timeouts)
        self.engine = engine
        self.window = 1
        self.running: dict[int, tuple[Request, asyncio.Task[None]]] = {}
        self.queued: deque[Request] = deque()
        # A DICOM TLS connection counted as pending since its accept (engine/core.py).
        self._pending_key: tuple[str, int, int] | None = admitted
        # The client's address when a balancer's PROXY header named it (engine/proxied.py).
        self._peer = peer
        self._reading_paused = False
        # Ended while operations were still being audited and logged after their answer:
        # its own "association closed" line and audit record wait for them.
        self._close_logged_later = False

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        super().connection_made(base)
        transport = cast(asyncio.Transport, base)
        address, port = self._peer or peer_of(transport)
        self.handle = ClientHandle.connect(address, port)
        if self._pending_key is None:
            sockname = transport.get_extra_info("sockname") or ("", 0)
            key = (address, port, int(sockname[1]))
            if not self.engine.pending.admit(key):
                self.state = "closed"
                transport.abort()  # PS: network.max_pending_*: closed at once, nothing read
                return
            self._pending_key = key
        self.engine.register(self)
        if self.engine.options.per_connection:  # else inherited from the listener
            self.engine.options.apply(transport.get_extra_info("socket"))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # PS3.15 B.1: the handshake is done, the peer verified
            self.handle.tls_version = ssl_object.version()
            self.handle.tls_subject = peer_subject(ssl_object)
        if TRACE.enabled:
            self.handle.log.debug("connection opened", tls_version=self.handle.tls_version)
        self._await_request()

    def _await_request(self) -> None:
        """PS3.8 Sta2: ARTIM runs until the A-ASSOCIATE-RQ is complete; a peer that starts
        one and stops has `request_body_timeout` seconds to finish it."""
        self.state = "awaiting-request"
        self.start_artim(self.timeouts.acse)

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == "awaiting-request" and self.framer.idle:
            self.start_artim(min(self.timeouts.acse, self.engine.request_body_timeout))
        super().buffer_updated(nbytes)

    def protocol_error(self, what: str, reason: int) -> None:
        if self.state == "awaiting-request" and what in PROXY_HEADER_ERRORS:
            # Not a PDU: a balancer's PROXY header, from an address not trusted to send one.
            self.handle.log.warning(
                "PROXY header from an untrusted address; connection closed",
                setting="network.proxy_protocol.trusted",
            )
            self.stop_artim()
            self.close_transport()
            return
        super().protocol_error(what, reason)

    # -- PDUs ----------------------------------------------------------------------------

    def on_pdu(self, pdu_type: int, body: bytes) -> None:
        state = self.state
        if state == "awaiting-request" and pdu_type == pdus.A_ASSOCIATE_RQ:
            self.stop_artim()
            request = pdus.decode_associate_request(body)
            read_request(request, self.handle)
            self.state = "deciding"
            # Decided once what was read with it is framed: a requestor that sends more before
            # the answer breaks PS3.8 (Sta3, AA-8) and is aborted instead of being answered.
            asyncio.get_running_loop().call_soon(self._requested, request)
        elif state == "established" and pdu_type == pdus.A_RELEASE_RQ:
            self.state = "releasing"
            self.queued.clear()  # PS3.8 7.2: the requestor has ended its requests
            self._release_when_idle()
        else:
            name = pdus.PDU_NAMES.get(pdu_type, hex(pdu_type))
            self.protocol_error(
                f"unexpected {name} in state {state}", pdus.ABORT_REASON_UNEXPECTED_PDU
            )

    def _requested(self, request: pdus.AssociateRequest) -> None:
        if self.state != "deciding":
            return  # aborted meanwhile
        if not request.protocol_version & 0x0001:
            self.handle.state = "requested"
            self._reject(Decision.reject(REJECT_PROTOCOL_VERSION, "protocol version not supported"))
            return
        negotiator = self.engine.negotiator
        if not negotiator.needs_executor(request):
            self._decided(request, negotiator.decide(request, self.handle))
            return
        self.transport.pause_reading()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.engine.io, negotiator.decide, request, self.handle)

        def decided(done: asyncio.Future[Decision]) -> None:
            if self.state != "deciding":
                negotiator.release(self.handle)
                return
            self.transport.resume_reading()  # type: ignore[union-attr]
            if done.cancelled() or done.exception() is not None:
                decision = Decision.reject(REJECT_TRANSIENT_NO_REASON, "policy evaluation failed")
            else:
                decision = done.result()
            self._decided(request, decision)

        future.add_done_callback(decided)

    def _decided(self, request: pdus.AssociateRequest, decision: Decision) -> None:
        self.handle.decision = decision
        if not decision.accepted or decision.grant is None:
            self._reject(decision)
            return
        try:
            accepted = self.engine.negotiator.accept(request, self.handle, decision.grant)
        except Exception:
            self.handle.log.exception("negotiation failed; rejecting (fail closed)")
            self._reject(Decision.reject(REJECT_TRANSIENT_NO_REASON, "negotiation failed"))
            return
        self._established(accepted)

    def _established(self, accepted: Accepted) -> None:
        self.contexts = accepted.contexts
        self.window = max(1, accepted.invoked_window)
        self.peer_max_pdu, self.local_max_pdu = accepted.peer_max_pdu, accepted.local_max_pdu
        self.write(accepted.pdu)
        self.state = "established"
        handle = self.handle
        handle.state = "established"
        self._release_pending()
        self.start_idle_timer()
        metrics.association_established()
        if TRACE.enabled:  # at INFO, the "association closed" line says all of this
            handle.log.debug("association accepted", **_negotiated(handle))
        audit.association_accepted(handle)

    def _reject(self, decision: Decision) -> None:
        rejection = decision.rejection or REJECT_TRANSIENT_NO_REASON
        handle = self.handle
        handle.decision = handle.decision or decision
        handle.state = "rejected"
        self.engine.negotiator.release(handle)
        self._release_pending()
        handle.log.warning(
            "association rejected",
            reason=decision.reason,
            rule=decision.rule,
            rejection=rejection.describe(),
        )
        audit.association_rejected(
            handle, f"{decision.reason} ({rejection.describe()})", decision.rule
        )
        metrics.association_rejected(rejection.result, rejection.source, rejection.reason)
        reject = pdus.AssociateReject(rejection.result, rejection.source, rejection.reason)
        self.write(pdus.encode_associate_reject(reject))
        self.finish_and_close()

    # -- requests ------------------------------------------------------------------------

    def data_sink(self, command: Command, context: AcceptedContext) -> DataSink:
        return self.engine.operations.data_sink(self, command, context)

    def on_request(self, command: Command, context: AcceptedContext, data: object) -> None:
        if command.field == C_CANCEL_RQ:
            self._cancel(command.responded_to)
            return
        request = Request(command, context, data)
        if self.state != "established":
            self.engine.operations.discard(request)  # during release: not served
            return
        if not self.running and self.engine.operations.answer_now(self, request):
            return  # answered on the loop (in order: nothing was running before it)
        if len(self.running) < self.window:
            self._start(request)
            return
        self.queued.append(request)
        if len(self.queued) > self.window + QUEUE_SLACK and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _cancel(self, message_id: int | None) -> None:
        """PS3.7 9.3.2.3: C-CANCEL names the Message ID of the operation to stop."""
        running = self.running.get(message_id or -1)
        if running is not None:
            running[0].cancelled = True
            return
        for request in self.queued:
            if request.message_id == message_id:
                request.cancelled = True
                return
        self.handle.log.info("C-CANCEL for no outstanding operation", message_id=message_id)

    def _start(self, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(self.engine.operations.run(self, request))
        self.running[request.message_id] = (request, task)
        task.add_done_callback(lambda _task: self._finished(request))

    def answered(self, request: Request) -> None:
        """On the loop: `request`'s final response is written (its thread may still audit
        and log it); a release waiting for it can be answered."""
        request.answered = True
        if self.state == "releasing":
            self._release_when_idle()

    def _finished(self, request: Request) -> None:
        self.running.pop(request.message_id, None)
        if self._close_logged_later and not self.running:
            self._close_logged_later = False
            self._ended_record()
            return
        if self.state == "established":
            while self.queued and len(self.running) < self.window:
                self._start(self.queued.popleft())
            if self._reading_paused and len(self.queued) <= self.window:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
        elif self.state == "releasing":
            self._release_when_idle()

    def _release_when_idle(self) -> None:
        """PS3.8 AR-2..AR-4: the A-RELEASE-RP once every running operation has answered
        (its final response written: what it audits and logs after that needs no peer)."""
        if self.state != "releasing":
            return
        if any(not request.answered for request, _task in self.running.values()):
            return
        self.write(pdus.RELEASE_RP)
        self.handle.state = "released"
        self.finish_and_close()

    def busy(self) -> bool:
        return bool(self.running)

    # -- ending --------------------------------------------------------------------------

    def aborted_by_peer(self) -> None:
        if self.handle.state == "established":
            self.handle.state = "aborted"

    def abort(self, source: int, reason: int) -> None:
        if self.handle.state == "established":
            self.handle.state = "aborted"
        super().abort(source, reason)

    def ended(self, previous_state: str) -> None:
        handle = self.handle
        for request, _task in self.running.values():
            request.cancelled = True  # a running operation stops at its next look
        while self.queued:
            self.engine.operations.discard(self.queued.popleft())
        if self._pending_key is None:
            return  # refused at once: never registered
        if handle.state == "established":
            # Closed without A-RELEASE: an A-ABORT (PS3.8 7.3) or a dropped connection (7.4).
            handle.state = "aborted"
        self.engine.negotiator.release(handle)
        self._release_pending()
        running = [request for request, _task in self.running.values()]
        if running and all(request.answered for request in running):
            self._close_logged_later = True  # answered, auditing and logging: those first
            return
        self._ended_record()

    def _ended_record(self) -> None:
        """Unregister and count the ended association, log its line and audit it."""
        handle = self.handle
        self.engine.unregister(self)
        counters = handle.counters
        # Released or aborted: it was established (the states set above and in abort()).
        established = handle.state in ("released", "aborted")
        metrics.connection_ended(established, counters.bytes_received, counters.bytes_sent)
        # One line per association at INFO (its dimse lines aside): what was negotiated, how it
        # ended and what it did. A rejected one has its "association rejected" line too.
        handle.log.info(
            "association closed",
            state=handle.state,
            **(_negotiated(handle) if established else {}),
            duration_s=round(handle.duration_s, 3),
            operations=counters.operations,
            failures=counters.failures,
            instances_stored=counters.instances_stored,
            bytes_received=counters.bytes_received,
            bytes_sent=counters.bytes_sent,
        )
        audit.association_closed(handle)

    def _release_pending(self) -> None:
        key = self._pending_key
        if key is not None:
            self.engine.pending.release(key)


def _negotiated(handle: ClientHandle) -> dict[str, object]:
    """What an accepted association's log lines say of its negotiation."""
    accepted = len(handle.accepted_contexts)
    return {
        "rule": handle.decision.rule if handle.decision else None,
        "accepted_contexts": accepted,
        "rejected_contexts": len(handle.contexts) - accepted,
        "peer_max_pdu": handle.peer_max_pdu_size,
        "max_pdu": handle.local_max_pdu_size,
        "peer_implementation": handle.peer_implementation_version_name,
    }
