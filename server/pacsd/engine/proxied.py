"""Connections through a TCP balancer: which peers must send a PROXY header, and reading it.

`network.proxy_protocol` (and `http.proxy_protocol`) name the balancers' networks. A
connection from one of them must start with a PROXY header (v1 or v2, engine/proxy_protocol.py)
within `network.acse_timeout`; the client address it names then stands for the connection's
before anything else sees the connection (pending admission, policies, limits, audit, logs).
A connection from any other address is served as it is (its PROXY header, if it sends one, is
refused as a protocol error by the Acceptor), or refused at accept with `required`.

The header is read off the accepted socket before the loop makes a transport for it
(`read_proxy_header`): peeked, then exactly its bytes consumed, so that what follows (the
A-ASSOCIATE-RQ, or the TLS ClientHello, which the balancer passes through after the header)
stays in the socket for the transport. That is what lets DICOM TLS work behind a balancer:
the handshake starts after the header. With the feature off nothing here runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from enum import Enum

from pacsd.engine.proxy_protocol import (
    MAX_HEADER_LENGTH,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)
from pacsd.logs import get_logger
from pacsd.settings import ProxyProtocolSettings

log = get_logger("pacsd.listener")
WARNING_INTERVAL_S = 10.0  # refusals of direct connections: one warning line per interval


class Route(Enum):
    """What to do with a new connection, by its address."""

    DIRECT = "direct"  # not from a balancer: served as it is
    HEADER = "header"  # from a trusted balancer: read the PROXY header first
    REFUSE = "refuse"  # not from a balancer while one is required


class ProxyTrust:
    """`proxy_protocol` compiled: the trusted networks and whether they are required."""

    def __init__(self, settings: ProxyProtocolSettings, setting: str) -> None:
        self.networks = tuple(ipaddress.ip_network(network) for network in settings.trusted)
        self.required = settings.required
        self.setting = setting  # "network.proxy_protocol" or "http.proxy_protocol", for logs
        self.log = log if setting.startswith("network") else get_logger("pacsd.http")
        self.refused = 0
        self._last_warning = -WARNING_INTERVAL_S
        self._since_warning = 0

    @property
    def enabled(self) -> bool:
        """Whether any balancer is trusted (else every connection is DIRECT)."""
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether `address` is a trusted balancer's."""
        try:
            peer = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped  # ::ffff:10.1.2.3 on a dual-stack socket
        return any(peer in network for network in self.networks)

    def route(self, address: str) -> Route:
        """The route of a connection from `address` (a refusal is counted and logged)."""
        if self.trusts(address):
            return Route.HEADER
        if not self.required:
            return Route.DIRECT
        self.refused += 1
        self._since_warning += 1
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL_S:
            self.log.warning(
                "connection closed: not from a trusted balancer, and a PROXY header is required",
                peer_address=address,
                setting=f"{self.setting}.required",
                refused=self._since_warning,
            )
            self._last_warning, self._since_warning = now, 0
        return Route.REFUSE

    def header_failed(self, address: tuple[str, int], reason: str) -> None:
        """Log a connection from a balancer closed for want of a valid header."""
        self.log.warning(
            "connection closed: no valid PROXY header from a trusted balancer",
            balancer=f"{address[0]}:{address[1]}",
            reason=reason,
            setting=f"{self.setting}.trusted",
        )


async def read_proxy_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """The PROXY header at the start of `sock` (non-blocking), read within `timeout` seconds;
    exactly its bytes are taken from the socket.

    Raises ProxyHeaderError (invalid), TimeoutError, or ConnectionError / OSError (closed)."""
    loop = asyncio.get_running_loop()
    received = b""  # bytes already taken: all of them part of the header
    async with asyncio.timeout(timeout):
        while True:
            try:
                peeked = sock.recv(MAX_HEADER_LENGTH - len(received), socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                await _readable(loop, sock)
                continue
            if not peeked:
                raise ConnectionError("closed before the PROXY header was complete")
            header = parse(received + peeked)
            if header is not None:
                _take(sock, header.length - len(received))
                return header
            # A strict prefix of a header: take it, so that waiting for more does not spin
            # on bytes that stay readable.
            _take(sock, len(peeked))
            received += peeked
            await _readable(loop, sock)


def _take(sock: socket.socket, count: int) -> None:
    """Consume `count` bytes already seen with MSG_PEEK (they are in the socket's buffer)."""
    while count > 0:
        taken = sock.recv(count)
        if not taken:
            raise ConnectionError("closed while the PROXY header was read")
        count -= len(taken)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def failure_reason(exc: BaseException, timeout: float) -> str:
    """One short reason for a header that could not be read, for the log."""
    if isinstance(exc, ProxyHeaderError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no PROXY header within {timeout:g} s (network.acse_timeout)"
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__
