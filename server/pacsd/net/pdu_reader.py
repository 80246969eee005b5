"""Reading PDUs without trusting their length field (PS3.8 9.3), for pacsd's DUL.

pynetdicom's `DULServiceProvider._read_pdu_data` (3.0.4) reads the 6-byte PDU header and then
as many bytes as its length field claims, with a blocking recv() and no deadline: a peer can
make it buffer up to 4 GiB, or hold its thread forever by stopping in the middle of a PDU.
`BoundedPduReader` is that method with a limit checked before the body is read
(net/pdu_limits.py) and a deadline on every read.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import cast

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from pacsd.logs import get_logger
from pacsd.net import pdu_limits

log = get_logger("pacsd.reactor")


class BoundedPduReader(DULServiceProvider):
    """pynetdicom's DUL with a bounded, deadline-limited PDU read."""

    _limits = pdu_limits.ReceiveLimits()

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read (3.0.4), refusing a PDU longer than allowed before its body.

        Each read waits at most the ARTIM time (before the A-ASSOCIATE-RQ) or the network
        timeout: pynetdicom's blocking recv() would wait forever on a peer that stops sending
        in the middle of a PDU, and its association could then never end.
        """
        holder = cast(AssociationSocket, self.socket)
        self._set_read_timeout(holder)
        try:
            header = bytes(holder.recv(6))
            if len(header) < 6:
                self.event_queue.put("Evt17")  # closed: PS3.8 9.2 transport connection closed
                return
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
            if pdu_type not in pdu_limits.KNOWN_PDU_TYPES:
                log.warning("unknown PDU type received", pdu_type=f"0x{pdu_type:02X}")
                self.event_queue.put("Evt19")  # PS3.8 9.2: unrecognized or invalid PDU
                return
            limit = pdu_limits.max_pdu_length(
                pdu_type, self.state_machine.current_state, self._maximum_length(), self._limits
            )
            if pdu_length > limit:
                self._refuse_pdu(holder, pdu_type, pdu_length, limit)
                return
            body = bytes(holder.recv(pdu_length))
        except OSError:  # TimeoutError included: the peer stopped in the middle of a PDU
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            log.warning("connection closed inside a PDU", received=len(body), length=pdu_length)
            self.event_queue.put("Evt17")
            return
        self._decoded(header + body)

    def _decoded(self, data: bytes) -> None:
        try:
            pdu, event = self._decode_pdu(bytearray(data))
        except Exception as exc:
            log.warning("received PDU does not decode", pdu_type=data[0], error=repr(exc))
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _maximum_length(self) -> int:
        """The maximum PDU length pacsd announced to this peer (PS3.8 D.1)."""
        local = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
        return int(local.maximum_length or 0)

    def _set_read_timeout(self, holder: AssociationSocket) -> None:
        sock = holder.socket
        if sock is None:
            return
        before_request = self.state_machine.current_state == "Sta2"
        timeout = self.assoc.acse_timeout if before_request else self.network_timeout
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)

    def _refuse_pdu(
        self, holder: AssociationSocket, pdu_type: int, pdu_length: int, limit: int
    ) -> None:
        """A-ABORT (service-provider, invalid PDU parameter value: PS3.8 9.3.8) and close.

        The body is never read. Closing the transport makes the state machine finish the
        abort: an A-P-ABORT indication to the association (AA-4), or, before the request, the
        end of the connection (AA-5).
        """
        log.warning(
            "PDU longer than pacsd accepts; aborting the association",
            pdu_type=f"0x{pdu_type:02X}",
            pdu_length=pdu_length,
            limit=limit,
            state=self.state_machine.current_state,
        )
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = pdu_limits.SERVICE_PROVIDER
        abort_pdu.reason_diagnostic = pdu_limits.INVALID_PDU_PARAMETER_VALUE
        self._send(abort_pdu)
        sock = holder.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the A-ABORT leaves before the close
        holder.close()
