"""PDUs framed off a byte stream, P-DATA-TF streamed PDV by PDV (PS3.8 9.3.1, 9.3.5, Annex E).

`Framer.feed` takes whatever the socket delivered (any split) and calls its `FrameSink`:
- `pdu_limit(pdu_type)` when a PDU header is complete, before its body is read: the longest
  variable field allowed now (the caller knows the association's state and what it offered);
- `pdu(pdu_type, body)` for each whole PDU other than P-DATA-TF;
- `pdv_start(context_id, control, length)`, `pdv_data(chunk)` (zero or more times, as the
  bytes arrive, never buffered here) and `pdv_end()` for each PDV of a P-DATA-TF.

A P-DATA-TF is never held whole: a data set fragment's bytes can go straight from the socket
buffer to their file. `pdv_data` gets a view of the caller's receive buffer, valid only during
the call. A structural error raises `FramingError`; the association is then aborted.
"""

from __future__ import annotations

import struct
from typing import Protocol

from pacsd.engine.pdu import P_DATA_TF

_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")
_HEADER, _BODY, _PDV_HEADER_STATE, _PDV_DATA = range(4)


class FramingError(Exception):
    """The byte stream breaks PDU structure; `reason` is the A-ABORT reason (PS3.8 9.3.8)."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class PduTooLong(FramingError):
    """A PDU header announces more than pacsd reads now (refused before its body)."""

    def __init__(self, pdu_type: int, length: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} of length {length} exceeds {limit}", reason=6)
        self.pdu_type, self.length, self.limit = pdu_type, length, limit


class FrameSink(Protocol):
    """What a Framer reports to."""

    def pdu_limit(self, pdu_type: int) -> int:
        """The longest variable field accepted for a PDU of `pdu_type` now (raise to refuse)."""
        ...

    def pdu(self, pdu_type: int, body: bytes) -> None:
        """A whole PDU other than P-DATA-TF."""
        ...

    def pdv_start(self, context_id: int, control: int, length: int) -> None:
        """A PDV begins: `length` bytes of fragment follow (PS3.8 E.2: control bit 0 command,
        bit 1 last fragment)."""
        ...

    def pdv_data(self, chunk: memoryview) -> None:
        """Some bytes of the current PDV's fragment (valid only during the call)."""
        ...

    def pdv_end(self) -> None:
        """The current PDV is complete."""
        ...


class Framer:
    """Splits a byte stream into PDUs and PDVs for a FrameSink."""

    __slots__ = ("_body", "_head", "_pdu_left", "_pdu_type", "_pdv_left", "_sink", "_state")

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink
        self._state = _HEADER
        self._head = bytearray()  # a PDU or PDV header split across two reads
        self._body = bytearray()
        self._pdu_type = 0
        self._pdu_left = 0  # bytes of the current P-DATA-TF still to come
        self._pdv_left = 0  # bytes of the current PDV's fragment still to come

    @property
    def idle(self) -> bool:
        """True between PDUs (nothing partial held)."""
        return self._state == _HEADER and not self._head

    def feed(self, data: memoryview) -> None:
        """Consume `data` entirely, reporting what it completes."""
        offset, end = 0, len(data)
        sink = self._sink
        while offset < end:
            state = self._state
            if state == _PDV_DATA:
                take = min(self._pdv_left, end - offset)
                sink.pdv_data(data[offset : offset + take])
                offset += take
                self._pdv_left -= take
                self._pdu_left -= take
                if not self._pdv_left:
                    sink.pdv_end()
                    self._state = _PDV_HEADER_STATE if self._pdu_left else _HEADER
                continue
            if state == _HEADER:
                offset = self._read_header(data, offset, end)
                continue
            if state == _PDV_HEADER_STATE:
                offset = self._read_pdv_header(data, offset, end)
                continue
            take = min(self._pdu_left - len(self._body), end - offset)
            self._body += data[offset : offset + take]
            offset += take
            if len(self._body) == self._pdu_left:
                body, self._body = bytes(self._body), bytearray()
                self._state = _HEADER
                sink.pdu(self._pdu_type, body)

    def _gather(
        self, data: memoryview, offset: int, end: int, size: int
    ) -> tuple[bytes | None, int]:
        """`size` header bytes, joined across reads; None until they are all there."""
        if not self._head and end - offset >= size:
            return bytes(data[offset : offset + size]), offset + size
        take = min(size - len(self._head), end - offset)
        self._head += data[offset : offset + take]
        if len(self._head) < size:
            return None, offset + take
        header, self._head = bytes(self._head), bytearray()
        return header, offset + take

    def _read_header(self, data: memoryview, offset: int, end: int) -> int:
        header, offset = self._gather(data, offset, end, 6)
        if header is None:
            return offset
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        limit = self._sink.pdu_limit(pdu_type)
        if length > limit:
            raise PduTooLong(pdu_type, length, limit)
        self._pdu_type, self._pdu_left = pdu_type, length
        if pdu_type == P_DATA_TF:
            if length == 0:
                raise FramingError("P-DATA-TF without a PDV", reason=6)
            self._state = _PDV_HEADER_STATE
        elif length == 0:
            self._sink.pdu(pdu_type, b"")
        else:
            self._state = _BODY
        return offset

    def _read_pdv_header(self, data: memoryview, offset: int, end: int) -> int:
        if self._pdu_left < 6:
            raise FramingError("PDV item header runs past its P-DATA-TF", reason=6)
        header, offset = self._gather(data, offset, end, 6)
        if header is None:
            return offset
        item_length, context_id, control = _PDV_HEADER.unpack(header)
        self._pdu_left -= 6
        # PS3.8 9.3.5.1: the item length counts the context ID and the control header.
        if item_length < 2:
            raise FramingError(f"PDV item length {item_length}", reason=6)
        if item_length - 2 > self._pdu_left:
            raise FramingError("PDV item runs past its P-DATA-TF", reason=6)
        self._pdv_left = item_length - 2
        self._sink.pdv_start(context_id, control, self._pdv_left)
        if self._pdv_left:
            self._state = _PDV_DATA
        else:
            self._sink.pdv_end()
            self._state = _PDV_HEADER_STATE if self._pdu_left else _HEADER
        return offset
