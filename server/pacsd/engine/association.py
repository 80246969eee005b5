"""One association on the event loop: transport, PDU framing, state, timers, DIMSE messages.

`Association` is the part both roles share (engine/acceptor.py and engine/requestor.py add
theirs): an `asyncio.BufferedProtocol` whose reads land in one receive buffer shared by every
association of the loop (a read is consumed before the next can happen), a `Framer` that
turns them into PDUs and PDVs, and a `MessageAssembler` that turns PDVs into messages.

States follow PS3.8 9.2 (Table 9-10), named rather than numbered:
  awaiting-request (Sta2), deciding (Sta3), awaiting-accept (Sta5), established (Sta6),
  releasing (Sta7 / Sta8), closing (Sta13: an A-ABORT, A-ASSOCIATE-RJ or A-RELEASE-RP went
  out; waiting, under ARTIM, for the peer to close), closed (Sta1).
A PDU the state does not expect gets an A-ABORT (AA-1, AA-8); a PDU that cannot be parsed
gets an A-ABORT with reason "invalid PDU parameter value"; both close the association.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pacsd.dicom.part10 import read_dataset_offset
from pacsd.dimse.commands import Command
from pacsd.dimse.messages import AcceptedContext
from pacsd.engine import pdu as pdus
from pacsd.engine.dimse import (
    COMMAND_FRAGMENT,
    LAST_FRAGMENT,
    DataSink,
    DimseProtocolError,
    MemorySink,
    MessageAssembler,
    fragment_limit,
    fragments,
    message_pdus,
)
from pacsd.engine.framing import Framer, FramingError, PduTooLong
from pacsd.engine.limits import ReceiveLimits
from pacsd.engine.ports import Outbox
from pacsd.engine.responses import store_request
from pacsd.engine.timers import sweeper
from pacsd.handle import ClientHandle
from pacsd.services.ports import AFTER_FILE_META, Outgoing


class TRACE:
    """Whether each PDU is logged (at DEBUG): decided once at start-up, not per PDU."""

    enabled = False


RECEIVE_BUFFER_SIZE = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024  # bytes buffered by the transport before pacsd waits
_shared_buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))


class Timeouts:
    """The association timers (seconds), from `network.*`."""

    __slots__ = ("acse", "dimse", "network")

    def __init__(self, acse: float, dimse: float, network: float) -> None:
        self.acse, self.dimse, self.network = acse, dimse, network


class Association(asyncio.BufferedProtocol):
    """The shared mechanics of one association (see the module docstring)."""

    def __init__(self, handle: ClientHandle, limits: ReceiveLimits, timeouts: Timeouts) -> None:
        self.handle = handle
        self.limits = limits
        self.timeouts = timeouts
        self.state = "connecting"
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(self)
        self.assembler = MessageAssembler(self, limits.max_command_size)
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu = 0
        self.local_max_pdu = 0
        self._closed: asyncio.Future[None] | None = None  # made when someone waits for it
        self._writable = True
        self._drained: asyncio.Future[None] | None = None
        self._artim_deadline: float | None = None  # PS3.8 9.1.5, checked by the sweeper
        self._idle_after: float | None = None  # seconds of silence before the abort
        self._last_received = time.monotonic()
        # Responses to requests pacsd sent on this association, by Message ID.
        self._awaiting: dict[int, asyncio.Future[tuple[Command, object]]] = {}
        self._next_message_id = 1
        self._outbox: Outbox | None = None
        self.loop = asyncio.get_running_loop()

    # -- transport events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sweeper().add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]

    receive_buffer = _shared_buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._last_received = time.monotonic()
        self.handle.data_received(nbytes)
        self.feed(_shared_buffer[:nbytes])

    def feed(self, data: memoryview) -> None:
        """Frame received bytes; a protocol error aborts the association."""
        if self.state in ("closing", "closed"):
            return  # PS3.8 Sta13: whatever still arrives is ignored
        try:
            self.framer.feed(data)
        except PduTooLong as exc:
            self.handle.log.warning(
                "PDU longer than pacsd accepts; aborting the association",
                pdu_type=f"0x{exc.pdu_type:02X}",
                pdu_length=exc.length,
                limit=exc.limit,
                state=self.state,
            )
            self.abort(pdus.ABORT_SOURCE_PROVIDER, exc.reason)
        except FramingError as exc:
            self.protocol_error(str(exc), exc.reason)
        except pdus.PduError as exc:
            self.protocol_error(str(exc), pdus.ABORT_REASON_INVALID_PARAMETER)
        except DimseProtocolError as exc:
            self.protocol_error(f"DIMSE protocol error: {exc}", pdus.ABORT_REASON_NOT_SPECIFIED)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake_writers()

    def _wake_writers(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._outbox is not None:
            self._outbox.wake()

    @property
    def writable(self) -> bool:
        """Whether the transport takes more without waiting (read from worker threads too)."""
        return self._writable

    @property
    def outbox(self) -> Outbox:
        """Where worker threads hand PDUs to this association (made on first use)."""
        outbox = self._outbox
        if outbox is None:  # also from a worker thread: the loop is the one noted at start
            outbox = self._outbox = Outbox(self, self.loop)
        return outbox

    async def wait_closed(self) -> None:
        """Until the connection has ended."""
        if self.state == "closed":
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed)

    @property
    def gone(self) -> bool:
        """Whether the connection has ended."""
        return self.state == "closed"

    def connection_lost(self, exc: Exception | None) -> None:
        previous, self.state = self.state, "closed"
        sweeper().discard(self)
        self._artim_deadline = self._idle_after = None
        self.assembler.discard()
        for future in self._awaiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the association ended"))
        self._awaiting.clear()
        self._writable = True  # nobody may wait for a transport that is gone
        self._wake_writers()
        self.ended(previous)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -- what the roles provide ----------------------------------------------------------

    def ended(self, previous_state: str) -> None:
        """The connection is gone (from `previous_state`)."""

    def on_pdu(self, pdu_type: int, body: bytes) -> None:
        """A whole PDU other than P-DATA-TF."""
        raise NotImplementedError

    def data_sink(self, command: Command, context: AcceptedContext) -> DataSink:
        """Where a received message's data set goes; in memory unless a role says otherwise."""
        return MemorySink(self.limits.max_memory_dataset_size)

    def on_request(self, command: Command, context: AcceptedContext, data: object) -> None:
        """A request message from the peer."""
        raise NotImplementedError

    # -- FrameSink -----------------------------------------------------------------------

    def pdu_limit(self, pdu_type: int) -> int:
        """PS3.8 9.3.1 / D.1: the longest variable field pacsd reads for this PDU now."""
        if TRACE.enabled:
            self.handle.log.debug(
                "PDU received", pdu=pdus.PDU_NAMES.get(pdu_type, hex(pdu_type)), state=self.state
            )
        if pdu_type not in pdus.PDU_NAMES:
            raise FramingError(
                f"unknown PDU type 0x{pdu_type:02X}", pdus.ABORT_REASON_UNRECOGNIZED_PDU
            )
        if pdu_type == pdus.P_DATA_TF:
            if self.state not in ("established", "releasing"):
                raise FramingError(
                    f"P-DATA-TF in state {self.state}", pdus.ABORT_REASON_UNEXPECTED_PDU
                )
            return self.local_max_pdu or self.limits.unlimited_pdu_cap
        if pdu_type in (pdus.A_ASSOCIATE_RQ, pdus.A_ASSOCIATE_AC):
            return self.limits.max_association_request_size
        return FIXED_PDU_CAP

    def pdu(self, pdu_type: int, body: bytes) -> None:
        if pdu_type == pdus.A_ABORT:
            self.peer_aborted(body)
            return
        self.on_pdu(pdu_type, body)

    def pdv_start(self, context_id: int, control: int, length: int) -> None:
        self.assembler.pdv_start(context_id, control, length)

    def pdv_data(self, chunk: memoryview) -> None:
        self.assembler.pdv_data(chunk)

    def pdv_end(self) -> None:
        self.assembler.pdv_end()

    # -- MessageOwner --------------------------------------------------------------------

    def accepted_context(self, context_id: int) -> AcceptedContext | None:
        return self.contexts.get(context_id)

    def message(self, command: Command, context: AcceptedContext, data: object) -> None:
        if command.field & 0x8000:
            self._on_response(command, data)
        else:
            self.on_request(command, context, data)

    def _on_response(self, command: Command, data: object) -> None:
        future = self._awaiting.get(command.responded_to or -1)
        if future is None or future.done():
            self.handle.log.warning(
                "response to no outstanding request ignored",
                command_field=f"0x{command.field:04X}",
                message_id_being_responded_to=command.responded_to,
            )
            return
        del self._awaiting[command.responded_to or -1]
        future.set_result((command, data))

    # -- sending -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Put bytes on the wire (counted on the handle)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        self.handle.data_sent(len(data))
        if TRACE.enabled:
            self.handle.log.debug(
                "PDU sent", pdu=pdus.PDU_NAMES.get(data[0], hex(data[0])), bytes=len(data)
            )

    def write_all(self, pdus: list[bytes]) -> None:
        """Put several PDUs on the wire in one write."""
        self.write(pdus[0] if len(pdus) == 1 else b"".join(pdus))

    async def drain(self) -> None:
        """Wait until the transport has room (flow control for long sends)."""
        if not self._writable:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def expect_response(self, message_id: int) -> asyncio.Future[tuple[Command, object]]:
        """A future for the response to the request pacsd is about to send."""
        future: asyncio.Future[tuple[Command, object]] = asyncio.get_running_loop().create_future()
        self._awaiting[message_id] = future
        return future

    def next_message_id(self) -> int:
        """A Message ID for a request pacsd sends (PS3.7 9.3.1.1: unique among outstanding)."""
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1
        return message_id

    async def send_c_store(self, outgoing: Outgoing, originator: tuple[str, int] | None) -> int:
        """One C-STORE sub-operation on this association; the response's status.

        LookupError when no accepted context lets pacsd send this SOP class in this syntax.
        """
        context = next(
            (
                cx
                for cx in self.contexts.values()
                if cx.abstract_syntax == outgoing.sop_class_uid
                and cx.transfer_syntax == outgoing.transfer_syntax
                and cx.pacsd_scu
            ),
            None,
        )
        if context is None:
            raise LookupError("no accepted context for this SOP class and transfer syntax")
        message_id = self.next_message_id()
        answer = self.expect_response(message_id)
        command = store_request(outgoing, message_id, originator)
        try:
            await self._send_store(context.context_id, command, outgoing)
        except BaseException:
            self._awaiting.pop(message_id, None)  # nothing, or an abort, went out
            raise
        reply, _data = await asyncio.wait_for(answer, self.timeouts.dimse)
        return reply.status if reply.status is not None else 0xC000

    async def _send_store(self, context_id: int, command: bytes, outgoing: Outgoing) -> None:
        if outgoing.data is not None:
            data, limit = outgoing.data, self.peer_max_pdu
            self.write_all(list(message_pdus(context_id, command, data, limit)))
        elif outgoing.stream is not None:
            stream, offset, size = outgoing.stream, outgoing.offset, outgoing.size
            await self.send_file(context_id, command, stream, offset, size)
        else:
            assert outgoing.path is not None
            await self.send_file(context_id, command, outgoing.path, outgoing.offset)

    async def send_file(
        self, context_id: int, command: bytes, source: Path | BinaryIO, offset: int, size: int = 0
    ) -> None:
        """A message whose data set is bytes [offset:] of a file, read block by block and
        sent as P-DATA-TF PDUs within the peer's maximum length (flow-controlled).

        `source` is a local file's path (read on the loop: the page cache answers at once;
        `offset` AFTER_FILE_META: where its file meta group ends), or
        an object store's reader of `size` bytes, which the caller opened and closes: its
        blocks are read in the loop's default executor, since each may wait on the network
        (a ranged GET). Not the `work` pool: the C-GET or C-MOVE thread waiting for this send
        holds one of its threads, and a full pool would then wait on itself.
        """
        if isinstance(source, Path):
            with open(source, "rb", buffering=0) as file:
                size = os.fstat(file.fileno()).st_size
                if offset == AFTER_FILE_META:
                    offset = read_dataset_offset(file, source.name)
                file.seek(offset)
                await self._send_blocks(context_id, command, file.read, size - offset, None)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, source.seek, offset)
        await self._send_blocks(context_id, command, source.read, size - offset, loop)

    async def _send_blocks(
        self,
        context_id: int,
        command: bytes,
        read: Callable[[int], bytes],
        remaining: int,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """The command, then `remaining` bytes of `read` as data fragments; with `loop`, each
        block is read in its default executor, else on the loop itself."""
        limit = fragment_limit(self.peer_max_pdu)
        block_size = max(limit, (FILE_BLOCK // limit) * limit)
        self.write_all(list(fragments(context_id, command, COMMAND_FRAGMENT, limit)))
        while True:
            wanted = min(block_size, max(remaining, 0))
            if not wanted:
                block = b""
            elif loop is None:
                block = read(wanted)
            else:
                block = await loop.run_in_executor(None, read, wanted)
                if self.gone:
                    raise ConnectionError("the association ended")
            if len(block) != wanted:
                self.abort(pdus.ABORT_SOURCE_PROVIDER, pdus.ABORT_REASON_NOT_SPECIFIED)
                raise ConnectionError("the stored file changed while it was sent")
            remaining -= len(block)
            last = remaining <= 0
            self.write(_data_pdus(context_id, block, limit, last))
            if last:
                return
            await self.drain()
            if self.gone:
                raise ConnectionError("the association ended")

    async def send_request(
        self, context_id: int, command: bytes, message_id: int, data: bytes | None
    ) -> tuple[Command, object]:
        """Send a request pacsd makes and wait (DIMSE timeout) for its response."""
        answer = self.expect_response(message_id)
        self.write_all(list(message_pdus(context_id, command, data, self.peer_max_pdu)))
        return await asyncio.wait_for(answer, self.timeouts.dimse)

    # -- timers --------------------------------------------------------------------------

    def start_artim(self, seconds: float) -> None:
        """(Re)start ARTIM (PS3.8 9.1.5): when it expires, the connection is closed."""
        self._artim_deadline = time.monotonic() + seconds

    def stop_artim(self) -> None:
        self._artim_deadline = None

    def start_idle_timer(self) -> None:
        """Abort the association when the peer sends nothing for `network_timeout` seconds
        while pacsd waits for it (an operation in progress counts as activity)."""
        if self.timeouts.network > 0:
            self._idle_after = self.timeouts.network

    def check_timers(self, now: float) -> None:
        """From the sweeper (engine/timers.py): ARTIM, then the idle timeout."""
        artim = self._artim_deadline
        if artim is not None and now >= artim:
            self._artim_deadline = None
            if self.state != "closing":
                self.handle.log.info(
                    "ARTIM timer expired; closing the connection", state=self.state
                )
            self.close_transport()
            return
        idle = self._idle_after
        if idle is None or self.state not in ("established", "releasing"):
            return
        if now - self._last_received < idle or self.busy():
            return
        self._idle_after = None
        self.handle.log.warning("network timeout: nothing received; aborting", seconds=idle)
        self.abort(pdus.ABORT_SOURCE_PROVIDER, pdus.ABORT_REASON_NOT_SPECIFIED)

    def busy(self) -> bool:
        """Whether pacsd itself is working for the peer (the idle timer waits then)."""
        return False

    # -- ending --------------------------------------------------------------------------

    def protocol_error(self, what: str, reason: int) -> None:
        """The peer broke PS3.8/PS3.7: one log line, A-ABORT (source: service provider)."""
        self.handle.log.warning(
            "protocol error; aborting the association", error=what, state=self.state
        )
        self.abort(pdus.ABORT_SOURCE_PROVIDER, reason)

    def abort(self, source: int, reason: int) -> None:
        """Send an A-ABORT and wait (ARTIM) for the peer to close (PS3.8 AA-1, Sta13)."""
        if self.state in ("closing", "closed"):
            return
        self.write(pdus.encode_abort(source, reason))
        self.finish_and_close()

    def peer_aborted(self, body: bytes) -> None:
        """An A-ABORT from the peer (PS3.8 AA-3): the association ends at once."""
        source, reason = pdus.decode_abort(body) if len(body) >= 4 else (0, 0)
        self.handle.log.info("A-ABORT received", source=source, reason=reason, state=self.state)
        self.aborted_by_peer()
        self.close_transport()

    def aborted_by_peer(self) -> None:
        """Hook: the peer aborted."""

    def finish_and_close(self) -> None:
        """After a last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT): PS3.8 Sta13, ARTIM runs
        and the peer closes the connection (AE-4, AR-3, AA-3); pacsd closes it at ARTIM's end
        if the peer does not. Closing first could make the peer miss that last PDU."""
        self.state = "closing"
        if self.transport is not None:
            self.start_artim(self.timeouts.acse)

    def close_transport(self) -> None:
        """Close now (buffered writes are still flushed)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()


FIXED_PDU_CAP = 64  # A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 4 bytes (PS3.8 9.3.4-9.3.8)
FILE_BLOCK = 1024 * 1024  # bytes of a stored file read at once when sending it


def _data_pdus(context_id: int, block: bytes, limit: int, last: bool) -> bytes:
    """A block of data set bytes as P-DATA-TF PDUs of one PDV each; `last`: the final block."""
    parts: list[bytes] = []
    view = memoryview(block)
    total = len(block)
    offset = 0
    while True:
        size = min(limit, total - offset)
        end = offset + size >= total
        control = LAST_FRAGMENT if (end and last) else 0
        parts.append(pdus.p_data_header(size) + pdus.pdv_header(size, context_id, control))
        parts.append(view[offset : offset + size])  # type: ignore[arg-type]
        offset += size
        if end:
            return b"".join(parts)


def peer_of(transport: Any) -> tuple[str, int]:
    """The peer's address and port of a transport."""
    peer = transport.get_extra_info("peername") or ("unknown", 0)
    return str(peer[0]), int(peer[1])
