"""Event-driven reactors for accepted associations, in place of pynetdicom's polling loops.

pynetdicom 3.0 runs two threads per association and both poll: the DUL thread sleeps 1 ms
whenever a pass found nothing to do, and the association's reactor sleeps 1 ms before every
look at its queues. A C-STORE crosses both loops on the way in and the DUL loop again on the
way out, so each request/response exchange waits on several sleeps and both idle threads of
every association keep waking a thousand times a second, taking the GIL from the ones that
work (PYNETDICOM_NOTES.md). Here the same loops wait instead on what they wait for:

- `EventDUL` blocks in select() on the peer's socket and a wake-up pipe, written to when the
  local user hands it a primitive to send (`send_pdu`) or stops it (`kill_dul`);
- `EventAssociation`'s reactor blocks on an Event set whenever a DIMSE message is complete, the
  DUL passes an ACSE primitive up (release, abort) or the DUL thread ends;
- its checkpoint (`Checkpoint`, in place of pynetdicom's plain Event) says when the reactor is
  blocked on it, so that `services.retrieve.pause_reactor` waits for that instead of polling.

Both still wake at least every `IDLE_WAIT_S` to check their timers (ARTIM, network idle) and
flags. Everything else (state machine, checkpoint pausing that `services.retrieve.pause_reactor`
relies on, release/abort/timeout handling) is pynetdicom's, copied from 3.0.4: pyproject pins
pynetdicom below 3.1. Upstream, the fix would be the same: a selector on the socket plus a
wake-up channel in `DULServiceProvider.run_reactor`, and queue-driven waits in
`Association._run_reactor` (the TODO in dul.py says as much).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import ssl
import threading
import weakref
from copy import deepcopy
from typing import Any, cast

import pynetdicom.ae
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

from pacsd.logs import get_logger
from pacsd.net import pdu_limits
from pacsd.net.dimse_limits import DimseProtocolError, LimitedDIMSE, discard_spool
from pacsd.net.pdu_reader import BoundedPduReader

IDLE_WAIT_S = 0.05  # longest sleep of an idle loop: bounds how late a timer or flag is seen
KILL_WAIT_S = 0.01  # longest wait between looks at whether the DUL has stopped (pynetdicom's)

log = get_logger("pacsd.reactor")


class SignallingQueue(queue.Queue[Any]):
    """A queue that sets `signal` whenever something is put on it."""

    def __init__(self, signal: threading.Event) -> None:
        super().__init__()
        self.signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.signal.set()


class EventDUL(BoundedPduReader):
    """pynetdicom's DUL whose idle loop waits in select() instead of sleeping 1 ms."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._pipe_lock = threading.Lock()
        self._limits = pdu_limits.current()
        self._acceptor_released = False
        self.stopped = threading.Event()  # back in Sta1 after an action, or the thread ended
        # Closed when the thread ends, or when this object goes if the thread never ran (a
        # requestor whose connection failed before its DUL started).
        self._close_descriptors = weakref.finalize(
            self, _close_all, self._wake_read, self._wake_write
        )

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        """As pynetdicom (stop only in Sta1), but wake the loop instead of waiting it out."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def _wake(self) -> None:
        with self._pipe_lock:
            if self._wake_write >= 0:
                with contextlib.suppress(BlockingIOError):  # a full pipe wakes it already
                    os.write(self._wake_write, b"\0")

    def close_pipe(self) -> None:
        """Release the wake-up pipe (the thread has ended or never started)."""
        with self._pipe_lock:
            self._close_descriptors()
            self._wake_read = self._wake_write = -1

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop (3.0.4), waiting on the socket when there is nothing to do."""
        try:
            self._loop()
        finally:
            self.close_pipe()
            dimse = self.assoc.dimse
            if isinstance(dimse, LimitedDIMSE):
                dimse.discard_partial_message()  # no more fragments can come
            self._release_waiting_acceptor()
            activity = getattr(self.assoc, "activity", None)
            if activity is not None:
                activity.set()  # the association's reactor checks `dul.is_alive()`
            self.stopped.set()

    def _release_waiting_acceptor(self) -> None:
        """End an acceptor's wait for the A-ASSOCIATE-RQ once none can come any more.

        pynetdicom's acceptor thread blocks in `receive_pdu(timeout=acse_timeout)` for the
        request; when the connection closes or is aborted first, it would sit out the whole
        timeout. A None in the queue is what it gets on a timeout: it ends at once.
        """
        if self._acceptor_released or not self.assoc.is_acceptor:
            return
        if self.assoc.requestor.primitive is None:
            self._acceptor_released = True
            self.to_user_queue.put(None)

    def _loop(self) -> None:
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    busy = True
                elif self._is_transport_event():
                    self._idle_timer.restart()
                    busy = True
                else:
                    busy = False
            except Exception as exc:
                self._abort_on(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                if not busy:
                    self._wait_for_work()
                continue
            try:
                # pynetdicom lets an exception from an action (a P-DATA whose command set does
                # not decode, an event invalid in this state) end the thread without an A-ABORT.
                self.state_machine.do_action(event)
            except Exception as exc:
                self._abort_on(exc)
                return
            if self.state_machine.current_state == "Sta1":
                self._release_waiting_acceptor()
                self.stopped.set()

    def _abort_on(self, exc: Exception) -> None:
        """As pynetdicom: bypass the state machine, send an A-ABORT and stop both reactors."""
        if isinstance(exc, DimseProtocolError):  # the peer's doing, not pacsd's
            log.warning("DIMSE protocol error; aborting the association", error=str(exc))
        else:
            log.error("DUL failed; aborting the association", error=repr(exc))
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = pdu_limits.SERVICE_PROVIDER  # PS3.8 9.3.8
        abort_pdu.reason_diagnostic = 0x00
        with contextlib.suppress(Exception):
            cast(AssociationSocket, self.socket).send(abort_pdu.encode())
        # pynetdicom leaves the socket open here: a peer blocked sending a data set (nobody
        # reads any more) would wait for its own timeout, and EVT_CONN_CLOSE would never fire.
        with contextlib.suppress(Exception):
            cast(AssociationSocket, self.socket).close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _wait_for_work(self) -> None:
        """Block until the peer sends, the user hands over a primitive, or IDLE_WAIT_S."""
        holder = self.socket
        sock = holder.socket if holder is not None else None
        waiting: list[Any] = [self._wake_read]
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes already buffered: select() would not see them
            waiting.append(sock)
        try:
            ready, _, _ = select.select(waiting, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # the socket closed under us: look again next pass
            return
        if self._wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 512):
                    pass


def _close_all(*descriptors: int) -> None:
    for descriptor in descriptors:
        os.close(descriptor)


class Checkpoint:
    """pynetdicom's `_reactor_checkpoint` (a threading.Event), telling when the reactor is
    blocked on it.

    `parked` is set while a thread waits on the cleared checkpoint and has not been woken:
    what `services.retrieve.pause_reactor` waits for before a send_*() uses the DIMSE queue
    (it polled the condition's waiters every 0.1 ms, ~0.3 ms per C-MOVE/C-GET sub-operation
    here once each look had to win the GIL back).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._flag = False
        self._blocked = 0
        self.parked = threading.Event()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._condition:
            self._flag = True
            self.parked.clear()  # the waiters are woken: none is blocked any more
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._condition:
            if self._flag:
                return True
            self._blocked += 1
            self.parked.set()
            try:
                return self._condition.wait(timeout)
            finally:
                self._blocked -= 1
                if not self._blocked:
                    self.parked.clear()


class EventAssociation(Association):
    """An association whose reactor waits for messages instead of polling every millisecond.

    Acceptors are made by `EventRequestHandler`; requestors (C-MOVE sub-associations,
    commitment reports) by pynetdicom's `AE.associate`, once `use_for_requestors` ran.
    """

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.activity = threading.Event()
        self._reactor_checkpoint = Checkpoint()  # type: ignore[assignment]
        self._reactor_checkpoint.set()
        self.dul = EventDUL(self)  # the one Association.__init__ made is never started
        self.dimse = LimitedDIMSE(self)
        self.dul.to_user_queue = SignallingQueue(self.activity)
        self.dimse.msg_queue = SignallingQueue(self.activity)
        # Association.__init__ handed the timeouts to the DUL it made; hand them to this one.
        self.acse_timeout = self.ae.acse_timeout
        self.connection_timeout = self.ae.connection_timeout
        self.dimse_timeout = self.ae.dimse_timeout
        self.network_timeout = self.ae.network_timeout

    def kill(self) -> None:
        """pynetdicom's (3.0.4), but waiting for the DUL to reach Sta1 on an Event where
        pynetdicom sleeps 10 ms between looks: after a release the DUL gets there only once the
        connection closes, so every release (and so every C-MOVE sub-association, before its
        final response) waited ~10 ms more than it needed."""
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        dul = cast(EventDUL, self.dul)
        while dul.is_alive() and not dul.stop_dul():
            dul.stopped.wait(KILL_WAIT_S)  # bounded, as pynetdicom's sleep: flags are seen
        self.activity.set()

    def run_reactor(self) -> None:
        """pynetdicom's, then remove the spool files of C-STOREs that were never served."""
        try:
            super().run_reactor()
        finally:
            if self.is_acceptor:
                cast(LimitedDIMSE, self.dimse).discard_unserved()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """pynetdicom's; the spool file goes also when pynetdicom ignores the request (an
        invalid request, an unaccepted context, a request during release)."""
        try:
            super()._serve_request(msg, context_id)
        finally:
            discard_spool(msg)

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop (3.0.4) with a wait on `activity` for its 1 ms sleep."""
        self._is_paused = False
        idle = False
        while not self._kill:
            if idle:
                # Counts as paused: a send_*() or release() that stops the reactor (clear the
                # checkpoint, wait for _is_paused) goes on at once, and if a message wakes
                # this wait meanwhile, the checkpoint below holds the reactor off the queue.
                self._is_paused = True
                self.activity.wait(IDLE_WAIT_S)
            self.activity.clear()

            # Paused while a service (send_c_store, an N-EVENT-REPORT) uses the queues.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
            idle = msg is None

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("network timeout reached; aborting the association")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventRequestHandler(RequestHandler):
    """pynetdicom's connection handler (3.0.4), creating an `EventAssociation`."""

    def _create_association(self) -> Association:
        assoc = EventAssociation(self.ae, "acceptor")
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{self.client_address[0]}:{self.client_address[1]}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def use_for_requestors() -> None:
    """Make pynetdicom's `AE.associate` (which names the class directly) create
    `EventAssociation`s: process-wide, once at start-up, like pynetdicom's own `_config`."""
    pynetdicom.ae.Association = EventAssociation  # type: ignore[attr-defined]
