"""pynetdicom's threaded association server as pacsd runs it: socket options, caps on pending
connections, SO_REUSEPORT for worker processes, and DICOM TLS with the handshake off the
accept thread.

socketserver calls, on the accept thread: get_request (accept), verify_request (the pending
caps: False closes the socket at once, no thread is started), process_request (starts the
connection's thread, ThreadingMixIn); then, in that thread, finish_request, which hands the
socket to pacsd's EventRequestHandler. The TLS server does its handshake there, bounded by
`network.tls.handshake_timeout` (PYNETDICOM_NOTES.md, "TLS": pynetdicom's own ssl_context
wraps on the accept thread, so one silent client would stall every TLS client).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, cast

from pynetdicom.transport import ThreadedAssociationServer

from pacsd.logs import get_logger
from pacsd.net.pending import ConnectionKey, PendingConnections
from pacsd.net.sockets import SocketOptions
from pacsd.net.tls import handshake, handshake_failure

log = get_logger("pacsd.listener")


class PacsdServer(ThreadedAssociationServer):
    """The plain-TCP association server; subclassed per listener by `server_class`."""

    reuse_port = False  # SO_REUSEPORT: several worker processes listen on the port
    options = SocketOptions()
    pending: PendingConnections | None = None

    def server_bind(self) -> None:
        listening = cast(socket.socket, self.socket)
        if self.reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.options.apply_buffers(listening)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = cast(socket.socket, self.socket).accept()
        try:
            self.options.apply(client_socket)
        except OSError:  # the peer reset it already; socketserver skips the request
            client_socket.close()
            raise
        return client_socket, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """On the accept thread: False (beyond a pending cap) closes the socket at once."""
        return self.pending is None or self.pending.admit(self.key_of(client_address))

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started: socketserver closes the socket
            self.release(client_address)
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            super().finish_request(request, client_address)
        except BaseException:  # no association was made: nothing else will release it
            self.release(client_address)
            raise

    def service_actions(self) -> None:
        """Nothing. pynetdicom's runs a full `gc.collect()` every 60 calls (one per accepted
        connection or idle poll): ~60 ms holding the GIL, which stalled every association of
        the process. Python's own collector finds the association threads' reference cycles;
        the daemon freezes the start-up heap so that its full collections stay small."""

    def key_of(self, client_address: Any) -> ConnectionKey:
        """The pending-connection key of a peer's address on this server."""
        return (str(client_address[0]), int(client_address[1]), int(self.server_address[1]))

    def release(self, client_address: Any) -> None:
        """The connection is no longer pending (it ended before associating)."""
        if self.pending is not None:
            self.pending.release(self.key_of(client_address))


class TlsServer(PacsdServer):
    """The DICOM TLS association server (PS3.15 B.1/B.9)."""

    tls_context: ssl.SSLContext
    handshake_timeout = 10.0
    # A connection thread may sit in a handshake for up to handshake_timeout: do not make the
    # process wait for it at exit.
    daemon_threads = True

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the handshake, then pynetdicom's handler."""
        try:
            tls_socket = handshake(request, self.tls_context, self.handshake_timeout)
        except Exception as exc:
            self.release(client_address)
            log.warning(
                "TLS handshake failed; connection closed",
                peer_address=str(client_address[0]),
                peer_port=int(client_address[1]),
                reason=handshake_failure(exc, self.handshake_timeout),
            )
            return
        log.debug(
            "TLS handshake done",
            peer_address=str(client_address[0]),
            tls_version=tls_socket.version(),
            cipher=(tls_socket.cipher() or ("",))[0],
        )
        super().finish_request(tls_socket, client_address)


def server_class(
    options: SocketOptions,
    pending: PendingConnections,
    reuse_port: bool,
    tls: tuple[ssl.SSLContext, float] | None = None,
) -> type[PacsdServer]:
    """A server class for one listener (pynetdicom's make_server instantiates it and binds in
    the constructor, so what server_bind needs must be on the class)."""
    attributes: dict[str, Any] = {"options": options, "pending": pending, "reuse_port": reuse_port}
    base: type[PacsdServer] = PacsdServer
    if tls is not None:
        base = TlsServer
        attributes["tls_context"], attributes["handshake_timeout"] = tls
    return type(base.__name__, (base,), attributes)
