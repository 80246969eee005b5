"""The HTTP side behind a TCP balancer: PROXY headers in front of uvicorn's protocol.

uvicorn has no PROXY protocol support. With `http.proxy_protocol.trusted` set, each
connection's protocol is a `ProxyGate` (uvicorn's protocol class wrapped, see `gated`) that
decides by the connection's address (engine/proxied.py):
- from a trusted balancer: the bytes are held until the PROXY header (v1 or v2) is complete,
  within `network.acse_timeout`; then uvicorn's protocol is made and sees the connection through
  `ProxiedTransport`, whose "peername" is the client's address from the header and whose
  "socket" is None (uvicorn's `get_remote_addr` reads the socket's peer first, then
  "peername"), so Starlette's `request.client` and the `http.rules` see the client. The
  bytes after the header go to uvicorn, and the real transport then talks to uvicorn's
  protocol directly (`set_protocol`): nothing more per request.
- from another address: uvicorn's protocol at once; the gate looks at the first bytes only,
  and closes a connection that starts with a PROXY header (logged as such), then steps aside.
- refused at once when `required` and not from a balancer.
With the setting off, uvicorn's protocol class is not wrapped at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from pacsd.engine.proxied import ProxyTrust, Route
from pacsd.engine.proxy_protocol import ProxyHeaderError, looks_like_proxy_header, parse
from pacsd.logs import get_logger

log = get_logger("pacsd.http")


class ProxiedTransport(asyncio.Transport):
    """The connection's transport as uvicorn sees it: the client's address as "peername"."""

    def __init__(self, transport: asyncio.Transport, peername: tuple[str, int]) -> None:
        super().__init__()
        self._transport = transport
        self._peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "socket":
            return None  # its getpeername() is the balancer's
        return self._transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class ProxyGate(asyncio.Protocol):
    """One HTTP connection until its PROXY header is read (see the module docstring)."""

    def __init__(
        self, make_inner: Callable[[], asyncio.Protocol], trust: ProxyTrust, timeout: float
    ) -> None:
        self.make_inner = make_inner
        self.trust = trust
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None  # uvicorn's, once made
        self.received = b""
        self.address: tuple[str, int] = ("", 0)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = plain = cast(asyncio.Transport, transport)
        peer = plain.get_extra_info("peername") or ("", 0)
        self.address = (str(peer[0]), int(peer[1]))
        route = self.trust.route(self.address[0])
        if route is Route.REFUSE:
            plain.abort()
        elif route is Route.DIRECT:
            self.inner = self.make_inner()
            self.inner.connection_made(plain)
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.timeout, self._no_header)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.inner is not None:  # direct: the first bytes of a connection not proxied
            if looks_like_proxy_header(data):
                log.warning(
                    "PROXY header from an untrusted address; connection closed",
                    peer=f"{self.address[0]}:{self.address[1]}",
                    setting=f"{self.trust.setting}.trusted",
                )
                transport.abort()
                return
            transport.set_protocol(self.inner)
            self.inner.data_received(data)
            return
        self.received += data
        try:
            header = parse(self.received)
        except ProxyHeaderError as exc:
            self._failed(str(exc))
            return
        if header is None:
            return
        self._cancel_timer()
        rest, self.received = self.received[header.length :], b""
        peer = header.source or self.address  # LOCAL, UNKNOWN: the connection's own
        inner = self.inner = self.make_inner()
        inner.connection_made(ProxiedTransport(transport, peer))
        transport.set_protocol(inner)
        if rest:
            inner.data_received(rest)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def _no_header(self) -> None:
        self._timer = None
        self._failed(f"no PROXY header within {self.timeout:g} s (network.acse_timeout)")

    def _failed(self, reason: str) -> None:
        self._cancel_timer()
        self.trust.header_failed(self.address, reason)
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def gated(
    protocol_class: type[asyncio.Protocol], trust: ProxyTrust, timeout: float
) -> type[asyncio.Protocol]:
    """uvicorn's protocol class behind a `ProxyGate` (uvicorn calls it with keywords)."""

    class Gated(ProxyGate):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(lambda: protocol_class(**kwargs), trust, timeout)

    return Gated
