"""Socket options pacsd sets on the associations it opens."""

from __future__ import annotations

import socket

from pynetdicom.events import Event


def no_delay(event: Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on an outgoing association's socket, as on the
    accepted ones (PYNETDICOM_NOTES.md, "Sockets and measurement")."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
