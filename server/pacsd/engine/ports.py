"""The bridge between a service's executor thread and the engine's event loop.

`ThreadPort` is services/ports.py's OperationPort: a pending response is encoded in the
service's thread and handed to the loop in order (`Outbox`), which blocks the thread, never
the loop, while the peer reads slower than the service produces. A C-STORE sub-operation is a
coroutine on the loop (Association.send_c_store) the thread waits for; a batch of them is one
coroutine that also sends each Pending response, so the thread is woken once per batch, not
three times per sub-operation. Everything the thread hands over goes through
`call_soon_threadsafe`, so it reaches the wire in the order the thread made it, before the
operation's final response.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pacsd.dimse.messages import Request, encode_dataset
from pacsd.engine.dimse import message_pdus
from pacsd.engine.responses import response
from pacsd.errors import DicomStatusError
from pacsd.services.ports import (
    Outgoing,
    StoreSender,
    SubOperationCounts,
    SubOperationError,
    unreadable_reason,
)
from pacsd.services.retrieve import MoveDestinationUnknown
from pacsd.settings import Peer

if TYPE_CHECKING:
    from pacsd.engine.acceptor import Acceptor
    from pacsd.engine.association import Association

PENDING = 0xFF00  # PS3.4 C.4.2.1.5, C.4.3.1.5: sub-operations are continuing
OUTBOX_HIGH_WATER = 1024 * 1024  # bytes handed to the loop and not yet written
WAIT_SLICE_S = 0.5  # a blocked thread looks again at least this often (association gone?)
CONNECT_MARGIN_S = 5.0
FINAL_WAIT_S = 10.0  # a final response not written by then (a stopped loop) is not waited for
# Held pending responses go to the loop at the latest after this many, or this many bytes.
HOLD_RESPONSES = 16
HOLD_BYTES = 64 * 1024


class Outbox:
    """PDUs handed from threads to an association's transport, with back-pressure."""

    def __init__(self, assoc: Association, loop: asyncio.AbstractEventLoop) -> None:
        self.assoc = assoc
        self.loop = loop
        self._condition = threading.Condition()
        self._in_flight = 0

    def post(self, pdus: list[bytes]) -> None:
        """From a worker thread: queue `pdus` for the wire once there is room."""
        size = sum(len(item) for item in pdus)
        with self._condition:
            while self._congested() and not self.assoc.gone:
                self._condition.wait(WAIT_SLICE_S)
            if self.assoc.gone:
                return  # the association ended: the operation is cancelled and stops soon
            self._in_flight += size
        self.loop.call_soon_threadsafe(self._write, pdus, size)

    def _congested(self) -> bool:
        return self._in_flight > OUTBOX_HIGH_WATER or not self.assoc.writable

    def _write(self, pdus: list[bytes], size: int) -> None:
        self.assoc.write_all(pdus)
        with self._condition:
            self._in_flight -= size
            self._condition.notify_all()

    def wake(self) -> None:
        """On the loop: the transport drained or closed; blocked threads look again."""
        with self._condition:
            self._condition.notify_all()


class AssociationSender(StoreSender):
    """C-STOREs on an association, from a worker thread; the Pending responses of a batch
    go on `port`'s association."""

    def __init__(
        self,
        assoc: Association,
        loop: asyncio.AbstractEventLoop,
        port: ThreadPort,
        originator: tuple[str, int] | None = None,
    ) -> None:
        self.assoc = assoc
        self.loop = loop
        self.port = port
        self.originator = originator

    def accepted_syntaxes(self, sop_class_uid: str) -> list[str]:
        return [
            context.transfer_syntax
            for context in list(self.assoc.contexts.values())
            if context.abstract_syntax == sop_class_uid and context.pacsd_scu
        ]

    def send_c_store(self, outgoing: Outgoing) -> int:
        coroutine = self.assoc.send_c_store(outgoing, self.originator)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(self.assoc.timeouts.dimse + CONNECT_MARGIN_S)
        except FutureTimeout:
            future.cancel()
            raise SubOperationError("no C-STORE response in time") from None
        except (ConnectionError, TimeoutError):
            raise SubOperationError("no C-STORE response: association ended") from None
        except LookupError as exc:
            raise SubOperationError(str(exc)) from None

    def send_c_stores(
        self,
        batch: Sequence[Outgoing],
        on_result: Callable[[int, int | str], SubOperationCounts],
        cancelled: Callable[[], bool],
    ) -> int:
        coroutine = self._send_each(batch, on_result, cancelled)
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        # Each C-STORE is bounded by the DIMSE timeout on the loop; this bounds the whole.
        return future.result(len(batch) * (self.assoc.timeouts.dimse + CONNECT_MARGIN_S))

    async def _send_each(
        self,
        batch: Sequence[Outgoing],
        on_result: Callable[[int, int | str], SubOperationCounts],
        cancelled: Callable[[], bool],
    ) -> int:
        for index, outgoing in enumerate(batch):
            if cancelled():
                return index
            result: int | str
            try:
                result = await self.assoc.send_c_store(outgoing, self.originator)
            except TimeoutError:
                result = "no C-STORE response in time"
            except ConnectionError:
                result = "no C-STORE response: association ended"
            except LookupError as exc:
                result = str(exc)
            except (OSError, DicomStatusError) as exc:  # the stored file, opened to be sent
                result = unreadable_reason(exc)
            await self.port.send_pending(on_result(index, result))
        return len(batch)


class ThreadPort:
    """services.ports.OperationPort for one streaming operation of an acceptor.

    Held pending responses (C-FIND matches produced back to back) go to the loop in one
    hand-off per HOLD_RESPONSES or HOLD_BYTES, or with the final response: a thread-to-loop
    hand-off (a wake-up of the loop, a write) cost more than encoding a small response.
    """

    def __init__(self, assoc: Acceptor, request: Request, loop: asyncio.AbstractEventLoop) -> None:
        self.assoc = assoc
        self.request = request
        self.loop = loop
        self._held: list[bytes] = []
        self._held_responses = 0
        self._held_size = 0

    def pending(
        self,
        status: int,
        identifier: Dataset | bytes | None = None,
        counts: SubOperationCounts | None = None,
        hold: bool = False,
    ) -> None:
        request = self.request
        if isinstance(identifier, bytes):
            data: bytes | None = identifier
        else:
            syntax = request.context.transfer_syntax
            data = encode_dataset(identifier, syntax) if identifier else None
        command = response(request.command, status, has_data_set=data is not None, counts=counts)
        context_id = request.context.context_id
        pdus = list(message_pdus(context_id, command, data, self.assoc.peer_max_pdu))
        if not hold:
            self.flush()
            self.assoc.outbox.post(pdus)
            return
        self._held += pdus
        self._held_responses += 1
        self._held_size += sum(len(pdu) for pdu in pdus)
        if self._held_responses >= HOLD_RESPONSES or self._held_size >= HOLD_BYTES:
            self.flush()

    async def send_pending(self, counts: SubOperationCounts) -> None:
        """On the loop: a Pending response with `counts`, once the transport has room."""
        request, assoc = self.request, self.assoc
        command = response(request.command, PENDING, has_data_set=False, counts=counts)
        pdus = list(message_pdus(request.context.context_id, command, None, assoc.peer_max_pdu))
        await assoc.drain()
        assoc.write_all(pdus)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._held_responses = self._held_size = 0
            self.assoc.outbox.post(held)

    def final(self, pdus: list[bytes]) -> None:
        """From the operation's thread: the final response, after what is held; returns once
        the loop wrote it. Waiting costs a thread wake-up, but otherwise the loop would wait
        for the GIL while this thread goes on to audit and log the operation."""
        self.flush()
        written = threading.Event()

        def write() -> None:
            try:
                self.assoc.write_all(pdus)
                self.assoc.answered(self.request)
            finally:
                written.set()

        self.loop.call_soon_threadsafe(write)
        written.wait(FINAL_WAIT_S)

    def take_held(self) -> list[bytes]:
        """On the loop, once the operation's thread returned: the responses still held."""
        held, self._held = self._held, []
        return held

    @property
    def same_association(self) -> StoreSender:
        self.flush()
        return AssociationSender(self.assoc, self.loop, self)

    @contextmanager
    def sub_association(
        self, peer: Peer, contexts: Sequence[tuple[str, Sequence[str]]]
    ) -> Iterator[StoreSender]:
        """PS3.4 C.4.2.3.1: the C-MOVE's C-STOREs go on an association pacsd opens to the
        destination, each naming the C-MOVE's requester and Message ID."""
        engine = self.assoc.engine
        timeout = engine.timeouts.acse + engine.connect_timeout + CONNECT_MARGIN_S
        coroutine = engine.connect(peer, [(uid, list(ts)) for uid, ts in contexts])
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            requestor = future.result(timeout)
        except Exception as exc:
            future.cancel()
            raise MoveDestinationUnknown(f"destination did not associate: {_reason(exc)}") from None
        originator = (self.assoc.handle.calling_ae_title, self.request.message_id)
        try:
            yield AssociationSender(requestor, self.loop, self, originator)
        finally:
            # Released on the loop while this operation goes on to its final response, as
            # Orthanc does: a release round trip and the teardown no longer delay the answer.
            self.loop.call_soon_threadsafe(
                engine.release_later, requestor, peer, self.assoc.handle.log
            )


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
