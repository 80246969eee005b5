"""DIMSE messages from PDVs and back (PS3.7 6.3.1, PS3.8 Annex E).

`MessageAssembler` follows the PDVs of the P-DATA-TF PDUs an association receives: command
fragments into a small buffer, data set fragments into the sink its owner chooses when the
command is complete (a C-STORE's go straight into their file; the others into bounded
memory). A message that breaks the structure raises `DimseProtocolError` (the association is
aborted: the stream cannot be followed any more). `message_pdus` does the reverse for what
pacsd sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pacsd.dimse.commands import Command, CommandError, decode_command
from pacsd.dimse.messages import AcceptedContext
from pacsd.engine.pdu import p_data_header, pdv_header

COMMAND_FRAGMENT = 0x01  # PS3.8 E.2 message control header: bit 0 command, bit 1 last fragment
LAST_FRAGMENT = 0x02
# A P-DATA-TF pacsd sends to a peer that announced no maximum (0, PS3.8 D.1).
UNLIMITED_PDU = 1 << 20


class DimseProtocolError(Exception):
    """A peer broke the DIMSE message structure."""


class DataSink(Protocol):
    """Where a message's data set fragments go as they arrive."""

    def write(self, chunk: memoryview) -> None:
        """Some bytes of the data set."""
        ...

    def finish(self) -> object:
        """The last fragment arrived; what the message carries as its data."""
        ...

    def discard(self) -> None:
        """The message will never complete: release what it holds (idempotent)."""
        ...


class MessageOwner(Protocol):
    """What a MessageAssembler asks and tells."""

    def accepted_context(self, context_id: int) -> AcceptedContext | None:
        """The accepted context of that ID, or None."""
        ...

    def data_sink(self, command: Command, context: AcceptedContext) -> DataSink:
        """Where the data set of `command` should go."""
        ...

    def message(self, command: Command, context: AcceptedContext, data: object) -> None:
        """A whole message: its command, context and data (None without a data set)."""
        ...


class MemorySink:
    """A data set held in memory, up to `limit` bytes."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()

    def write(self, chunk: memoryview) -> None:
        if len(self._data) + len(chunk) > self.limit:
            raise DimseProtocolError(f"data set longer than {self.limit} bytes held in memory")
        self._data += chunk

    def finish(self) -> object:
        return bytes(self._data)

    def discard(self) -> None:
        self._data = bytearray()


class MessageAssembler:
    """Reassembles the messages of one association from its PDVs."""

    __slots__ = (
        "_command",
        "_command_bytes",
        "_context",
        "_is_command",
        "_is_last",
        "_sink",
        "max_command_size",
        "owner",
    )

    def __init__(self, owner: MessageOwner, max_command_size: int) -> None:
        self.owner = owner
        self.max_command_size = max_command_size
        self._context: AcceptedContext | None = None  # of the message being received
        self._command_bytes = bytearray()
        self._command: Command | None = None  # set once the command set is complete
        self._sink: DataSink | None = None
        self._is_command = False  # of the current PDV
        self._is_last = False

    def pdv_start(self, context_id: int, control: int, length: int) -> None:
        """A PDV header (PS3.8 E.2); checks it continues the message being received."""
        is_command = bool(control & COMMAND_FRAGMENT)
        self._is_command, self._is_last = is_command, bool(control & LAST_FRAGMENT)
        if self._context is None:
            if not is_command:
                raise DimseProtocolError("a data set fragment before its command")
            context = self.owner.accepted_context(context_id)
            if context is None:
                raise DimseProtocolError(
                    f"a PDV on presentation context {context_id}, not accepted"
                )
            self._context = context
        elif context_id != self._context.context_id:
            # PS3.7 6.3.1: a message's command and data set travel on one presentation context.
            raise DimseProtocolError("a message's fragments on two presentation contexts")
        elif is_command and self._command is not None:
            raise DimseProtocolError("a command fragment inside a data set")
        elif not is_command and self._command is None:
            raise DimseProtocolError("a data set fragment before its command is complete")
        if is_command and len(self._command_bytes) + length > self.max_command_size:
            raise DimseProtocolError("command set longer than pacsd accepts")

    def pdv_data(self, chunk: memoryview) -> None:
        """Bytes of the current PDV's fragment."""
        if self._is_command:
            self._command_bytes += chunk
        else:
            assert self._sink is not None
            self._sink.write(chunk)

    def pdv_end(self) -> None:
        """The current PDV is complete; a last fragment may complete the message."""
        if not self._is_last:
            return
        context = self._context
        assert context is not None
        if self._is_command:
            try:
                command = decode_command(self._command_bytes)
            except CommandError as exc:
                raise DimseProtocolError(f"command set does not decode: {exc}") from None
            self._command_bytes = bytearray()
            if not command.has_data_set:
                self._context = None
                self.owner.message(command, context, None)
                return
            self._command = command
            self._sink = self.owner.data_sink(command, context)
            return
        complete, sink = self._command, self._sink
        assert complete is not None
        assert sink is not None
        self._context, self._command, self._sink = None, None, None
        self.owner.message(complete, context, sink.finish())

    def discard(self) -> None:
        """The association ended: drop the partial message (its spool file included)."""
        sink, self._sink = self._sink, None
        self._context, self._command = None, None
        if sink is not None:
            sink.discard()


def message_pdus(
    context_id: int, command: bytes, data: bytes | None, max_pdu: int
) -> Iterator[bytes]:
    """The PDUs of a message whose data set is in memory; small messages go in one PDU.

    PS3.8 9.3.5: a P-DATA-TF may hold several PDVs; the command's last fragment and the
    data set's are separate PDVs (E.2). Each PDU's variable field stays within `max_pdu`.
    """
    limit = fragment_limit(max_pdu)  # the PDV item header inside a P-DATA-TF
    if data is not None and len(command) + len(data) + 6 <= limit:
        yield _two_pdvs(context_id, command, data)
        return
    yield from fragments(context_id, command, COMMAND_FRAGMENT, limit)
    if data is not None:
        yield from fragments(context_id, data, 0, limit)


def _two_pdvs(context_id: int, command: bytes, data: bytes) -> bytes:
    last_command = COMMAND_FRAGMENT | LAST_FRAGMENT
    body = (
        pdv_header(len(command), context_id, last_command)
        + command
        + pdv_header(len(data), context_id, LAST_FRAGMENT)
        + data
    )
    return p_data_header(len(body) - 6) + body


def fragments(context_id: int, value: bytes | memoryview, kind: int, limit: int) -> Iterator[bytes]:
    """`value` as P-DATA-TF PDUs of one PDV each, at most `limit` bytes of it per PDU (at
    least one PDU, so an empty data set still gets its last fragment)."""
    if limit <= 0:
        raise ValueError(f"no room for PDV data in PDUs of at most {limit + 6} bytes")
    total = len(value)
    offset = 0
    while True:
        size = min(limit, total - offset)
        last = offset + size >= total
        control = kind | (LAST_FRAGMENT if last else 0)
        yield (
            p_data_header(size)
            + pdv_header(size, context_id, control)
            + bytes(value[offset : offset + size])
        )
        offset += size
        if last:
            return


def fragment_limit(max_pdu: int) -> int:
    """The most data set bytes one PDV may carry when a PDU holds only it."""
    return (max_pdu or UNLIMITED_PDU) - 6
