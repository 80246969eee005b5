"""The listening sockets: opened once, before any worker process starts.

With several workers (`network.workers`) the supervisor opens them and every worker inherits
the same sockets: one accept queue shared by all, from which each worker takes one connection
per readiness event (engine/core.py). A busy worker comes back to it later than an idle one,
so connections go where there is time for them, which SO_REUSEPORT's hash of the peer's
address and port does not do (it put 5 or 6 of 8 connections on one of two workers).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pacsd.engine.sockets import SocketOptions
from pacsd.settings import NetworkSettings

LISTEN_BACKLOG = 512


class ListenError(Exception):
    """A listening socket could not be opened; the message names the listener and port."""


@dataclass(frozen=True)
class Listeners:
    """The plain and the DICOM TLS listening sockets (None: that listener is off)."""

    host: str
    plain: socket.socket | None
    tls: socket.socket | None

    @property
    def port(self) -> int | None:
        """The plain listener's port."""
        return _port_of(self.plain)

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port."""
        return _port_of(self.tls)

    def close(self) -> None:
        """Close both (idempotent)."""
        for sock in (self.plain, self.tls):
            if sock is not None:
                sock.close()


def _port_of(sock: socket.socket | None) -> int | None:
    return int(sock.getsockname()[1]) if sock is not None and sock.fileno() >= 0 else None


def open_listeners(network: NetworkSettings, options: SocketOptions) -> Listeners:
    """Bind and listen on the configured plain and TLS ports (ListenError names the one that
    failed and why; the other is closed again)."""
    plain = tls = None
    try:
        if network.listen_plain:
            plain = _listening_socket(network.host, network.port, options, "plain")
        if network.tls.enabled:
            tls = _listening_socket(network.host, network.tls.port, options, "TLS")
    except BaseException:
        Listeners(network.host, plain, tls).close()
        raise
    return Listeners(network.host, plain, tls)


def _listening_socket(host: str, port: int, options: SocketOptions, kind: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        options.apply_listening(sock)  # before listen: accepted sockets inherit them
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)  # worker processes share it
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {host}:{port} (the {kind} DICOM listener): {exc.strerror or exc}"
        ) from None
    return sock
