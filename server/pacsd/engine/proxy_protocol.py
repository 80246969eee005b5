"""The PROXY protocol header a TCP balancer puts in front of a connection (versions 1 and 2).

A balancer in TCP mode (HAProxy `send-proxy` / `send-proxy-v2`) opens its own connection to
pacsd, so the peer address pacsd sees is the balancer's. The PROXY protocol (HAProxy's
doc/proxy-protocol.txt, "The PROXY protocol, Versions 1 & 2") has the balancer send, before
any byte of the client's, one header naming the client's address. This module only parses it:
`parse` takes the bytes received so far and says "not yet", "here is the header, N bytes
long" or raises `ProxyHeaderError` with the reason in words. Whatever follows the header's N
bytes belongs to the connection (a DICOM PDU, a TLS ClientHello, an HTTP request) and is never
part of the result. No sockets, no asyncio (engine/proxied.py reads the header off a socket).

Version 1 (spec 2.1) is one line of text: "PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n",
at most 107 bytes with the CRLF. Version 2 (spec 2.2) is binary: a 12-byte signature, a byte
of version (2) and command (LOCAL or PROXY), a byte of address family and transport, a 16-bit
length of what follows (addresses, then TLVs, which pacsd skips).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # spec 2.1: the longest version 1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # spec 2.2: 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
V2_HEADER_LENGTH = 16  # signature, version and command, family and transport, length
# Bytes after the 16: addresses (12 for IPv4, 36 for IPv6, 216 for UNIX) and TLVs. The spec
# allows up to 65535; pacsd reads at most this many (HAProxy's TLVs are a few hundred bytes).
V2_MAX_BODY = 2048
MAX_HEADER_LENGTH = V2_HEADER_LENGTH + V2_MAX_BODY  # the most pacsd reads before deciding

_V2_LOCAL, _V2_PROXY = 0x0, 0x1  # spec 2.2: the low 4 bits of the 13th byte
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3  # high 4 bits of the 14th
_STREAM = 0x1  # its low 4 bits: 0 UNSPEC, 1 STREAM, 2 DGRAM
_V2_ADDRESS_LENGTHS = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: `length` bytes long (what follows is the connection's own data);
    `source` the client's (address, port), or None for LOCAL, UNKNOWN and unspecified
    families, where the connection's own address stands (spec 2.1 and 2.2)."""

    length: int
    version: int
    source: tuple[str, int] | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while `data` is a strict prefix of one.

    Raises ProxyHeaderError when `data` cannot begin a header, or the header is invalid or
    longer than pacsd reads (version 1: 107 bytes; version 2: 16 + V2_MAX_BODY)."""
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyHeaderError(f"no PROXY protocol header: the connection starts with 0x{data[0]:02X}")


def looks_like_proxy_header(data: bytes) -> bool:
    """Whether `data`, the first bytes of a connection (6 or more), start like a header."""
    if len(data) < len(V1_PREFIX):
        return False
    return data.startswith(V1_PREFIX) or V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)])


# -- version 1 (spec 2.1) ----------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyHeaderError("no PROXY protocol header: the connection starts with 'P'")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyHeaderError("PROXY v1 header: line not ended by CRLF")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 header: no CRLF within {V1_MAX_LENGTH} bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header: not ASCII text") from None
    fields = line.split(" ")
    protocol = fields[1] if len(fields) > 1 else ""
    if protocol == "UNKNOWN":  # spec 2.1: the rest of the line is ignored
        return ProxyHeader(end + 2, 1, None)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 header: unknown protocol {protocol[:16]!r}")
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 header: expected 4 fields after the protocol")
    _, _, source, destination, source_port, destination_port = fields
    version = 4 if protocol == "TCP4" else 6
    address = _v1_address(source, version)
    _v1_address(destination, version)
    port = _v1_port(source_port)
    _v1_port(destination_port)
    return ProxyHeader(end + 2, 1, (address, port))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:40]!r} is not an address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {text} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    # Spec 2.1: a decimal number in 0..65535, without leading zeros.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or text != str(int(text)):
        raise ProxyHeaderError(f"PROXY v1 header: {text[:8]!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: port {port} out of range")
    return port


# -- version 2 (spec 2.2) ----------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    signature = data[: len(V2_SIGNATURE)]
    if signature != V2_SIGNATURE[: len(signature)]:
        raise ProxyHeaderError("no PROXY protocol header: wrong PROXY v2 signature")
    if len(data) < V2_HEADER_LENGTH:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header: unsupported version {version}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header: unknown command 0x{command:X}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family > _AF_UNIX or transport > 0x2:
        raise ProxyHeaderError(f"PROXY v2 header: invalid family and transport 0x{data[13]:02X}")
    body = int.from_bytes(data[14:16], "big")
    if body > V2_MAX_BODY:
        raise ProxyHeaderError(
            f"PROXY v2 header: {body} bytes of addresses and TLVs, more than {V2_MAX_BODY}"
        )
    length = V2_HEADER_LENGTH + body
    if len(data) < length:
        return None
    needed = _V2_ADDRESS_LENGTHS.get(family, 0)
    if body < needed:
        raise ProxyHeaderError(f"PROXY v2 header: {body} bytes, too short for its addresses")
    # Spec 2.2: LOCAL (health checks, the balancer's own connections) keeps the real
    # endpoints; a receiver falls back to them (UNSPEC) for a family it does not serve.
    if command == _V2_LOCAL or transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        return ProxyHeader(length, 2, None)
    if family == _AF_INET:
        address = str(ipaddress.IPv4Address(data[16:20]))
        port = int.from_bytes(data[24:26], "big")
    else:
        address = str(ipaddress.IPv6Address(data[16:32]))
        port = int.from_bytes(data[48:50], "big")
    return ProxyHeader(length, 2, (address, port))
