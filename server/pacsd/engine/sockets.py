"""Socket options pacsd sets on every connection it accepts or opens (`network.*`).

TCP_NODELAY: with Nagle's algorithm on, a DIMSE request/response exchange can wait ~40 ms for a
delayed ACK (docs/dicom-notes.md, "Sockets and measurement"). SO_KEEPALIVE lets the kernel
notice a peer that vanished without a FIN. SO_SNDBUF/SO_RCVBUF are the operator's knob for
long, high-latency links; unset, the kernel's defaults and auto-tuning stay.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from pacsd.settings import NetworkSettings


@dataclass(frozen=True)
class SocketOptions:
    """The options of `network` that apply to each TCP connection."""

    tcp_nodelay: bool = True
    tcp_keepalive: bool = True
    send_buffer_size: int | None = None
    receive_buffer_size: int | None = None

    @classmethod
    def from_settings(cls, network: NetworkSettings) -> SocketOptions:
        """The socket options configured in `network`."""
        return cls(
            tcp_nodelay=network.tcp_nodelay,
            tcp_keepalive=network.tcp_keepalive,
            send_buffer_size=_optional_int(network.send_buffer_size),
            receive_buffer_size=_optional_int(network.receive_buffer_size),
        )

    def apply_buffers(self, sock: Any) -> None:
        """SO_SNDBUF/SO_RCVBUF when configured. On a listening socket this happens before
        listen(), so accepted connections inherit the receive buffer in their window scale."""
        if self.send_buffer_size is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_size)
        if self.receive_buffer_size is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer_size)

    def apply_listening(self, sock: Any) -> None:
        """Every option on a listening socket, before listen(): Linux gives accepted
        connections the listener's TCP_NODELAY, SO_KEEPALIVE and buffer sizes, so that an
        accepted connection needs `apply` only when `per_connection` says so."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.tcp_nodelay))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self.tcp_keepalive))
        self.apply_buffers(sock)

    @property
    def per_connection(self) -> bool:
        """Whether an accepted connection must be set again: uvloop turns TCP_NODELAY on for
        every TCP transport it makes, whatever the listener had."""
        return not self.tcp_nodelay

    def apply(self, sock: Any) -> None:
        """Every configured option on a connected TCP socket (None: not a socket, skipped)."""
        if sock is None:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.tcp_nodelay))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self.tcp_keepalive))
        self.apply_buffers(sock)


def _optional_int(value: int | None) -> int | None:
    return int(value) if value is not None else None
