"""The PROXY protocol parser (engine/proxy_protocol.py) against byte vectors built from
HAProxy's doc/proxy-protocol.txt (versions 1 and 2), and the settings that enable it."""

from __future__ import annotations

import socket
import struct

import pytest
from pydantic import ValidationError

from pacsd.engine.proxied import ProxyTrust, Route
from pacsd.engine.proxy_protocol import (
    V2_MAX_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    looks_like_proxy_header,
    parse,
)
from pacsd.settings import HttpSettings, ProxyProtocolSettings

A_ASSOCIATE_RQ_START = b"\x01\x00\x00\x00\x00\xcd\x00\x01"  # what follows a header on the wire


def v2(command: int, family: int, body: bytes) -> bytes:
    """A version 2 header: signature, version 2 and `command`, `family`, length, `body`."""
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack(">H", len(body)) + body


def v2_inet(source: str, source_port: int, tlvs: bytes = b"") -> bytes:
    """PROXY, TCP over IPv4, from `source`:`source_port` to 127.0.0.1:11112."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    return v2(0x1, 0x11, addresses + struct.pack(">HH", source_port, 11112) + tlvs)


def v2_inet6(source: str, source_port: int) -> bytes:
    """PROXY, TCP over IPv6, from [`source`]:`source_port` to [::1]:11112."""
    addresses = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
    return v2(0x1, 0x21, addresses + struct.pack(">HH", source_port, 11112))


def test_v1_tcp4_gives_the_source_and_leaves_what_follows() -> None:
    """A v1 TCP4 line names the client; its length ends at the CRLF, the PDU after it stays."""
    line = b"PROXY TCP4 192.168.0.7 10.0.0.1 56324 11112\r\n"
    header = parse(line + A_ASSOCIATE_RQ_START)
    assert header == ProxyHeader(len(line), 1, ("192.168.0.7", 56324))
    assert (line + A_ASSOCIATE_RQ_START)[header.length :] == A_ASSOCIATE_RQ_START


def test_v1_tcp6_and_unknown() -> None:
    """TCP6 gives an IPv6 source; UNKNOWN keeps the connection's own address (None)."""
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 104\r\n"
    assert parse(line) == ProxyHeader(len(line), 1, ("2001:db8::7", 4000))
    assert parse(b"PROXY UNKNOWN\r\nrest") == ProxyHeader(15, 1, None)
    unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(unknown) == ProxyHeader(len(unknown), 1, None)


def test_v1_longest_line_is_accepted() -> None:
    """The 107-byte worst case of the spec (TCP6, longest addresses and ports) is valid."""
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {longest} {longest} 65535 65535\r\n".encode()
    assert len(line) == 104
    header = parse(line)
    assert header is not None
    assert header.source == (longest, 65535)


@pytest.mark.parametrize("cut", [1, 5, 6, 20, 44])
def test_v1_truncated_is_incomplete(cut: int) -> None:
    """Any strict prefix of a v1 line asks for more bytes (None), never an error."""
    line = b"PROXY TCP4 192.168.0.7 10.0.0.1 56324 11112\r\n"
    assert parse(line[:cut]) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PROXY TCP4 " + b"1" * 100, "no CRLF within 107"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "not ended by CRLF"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "4 fields"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "4 fields"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "not an address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "not ASCII"),
        (b"PROXX TCP4", "starts with 'P'"),
        (b"POST / HTTP/1.1\r\n", "starts with 'P'"),
    ],
)
def test_v1_invalid(data: bytes, reason: str) -> None:
    """Oversized, badly ended, wrong protocol, fields, addresses or ports: refused, in words."""
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_v2_proxy_inet_and_inet6() -> None:
    """v2 PROXY over TCP4 and TCP6 gives the source; its length covers the addresses."""
    header = v2_inet("192.168.0.7", 56324)
    assert parse(header + A_ASSOCIATE_RQ_START) == ProxyHeader(28, 2, ("192.168.0.7", 56324))
    header6 = v2_inet6("2001:db8::7", 4000)
    assert parse(header6) == ProxyHeader(52, 2, ("2001:db8::7", 4000))


def test_v2_tlvs_are_skipped_and_what_follows_stays() -> None:
    """TLVs (here ALPN and an authority) count in the length and are skipped; the bytes after
    the header, a PDU or a TLS ClientHello, are not part of it."""
    tlvs = b"\x01\x00\x08dicom/ul" + b"\x02\x00\x0bexample.org"
    header = v2_inet("10.1.2.3", 1234, tlvs)
    data = header + b"\x16\x03\x01\x02\x00"  # a TLS record's start
    parsed = parse(data)
    assert parsed == ProxyHeader(len(header), 2, ("10.1.2.3", 1234))
    assert data[parsed.length :] == b"\x16\x03\x01\x02\x00"


def test_v2_local_and_unspecified_families_keep_the_own_address() -> None:
    """LOCAL (a balancer's health check), AF_UNSPEC and AF_UNIX fall back to the connection's
    own address (spec 2.2): source None."""
    assert parse(v2(0x0, 0x00, b"")) == ProxyHeader(16, 2, None)
    assert parse(v2(0x0, 0x11, bytes(12))) == ProxyHeader(28, 2, None)
    assert parse(v2(0x1, 0x00, b"")) == ProxyHeader(16, 2, None)
    assert parse(v2(0x1, 0x31, bytes(216))) == ProxyHeader(232, 2, None)


@pytest.mark.parametrize("cut", [1, 6, 11, 12, 15, 16, 27])
def test_v2_truncated_is_incomplete(cut: int) -> None:
    """Any strict prefix of a v2 header (signature, fixed part, addresses) asks for more."""
    assert parse(v2_inet("192.168.0.7", 56324)[:cut]) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (V2_SIGNATURE[:5] + b"X", "wrong PROXY v2 signature"),
        (b"\r\n\r\n\x00\r\nQUIT\r" + bytes(4), "wrong PROXY v2 signature"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "unsupported version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 0x2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "invalid family"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "invalid family"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "too short for its addresses"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "too short for its addresses"),
        (V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", V2_MAX_BODY + 1), "more than 2048"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "more than"),
    ],
)
def test_v2_invalid(data: bytes, reason: str) -> None:
    """Wrong signature, version, command, family, short or oversized bodies: refused in words
    (an oversized length is refused from the 16 fixed bytes, before its body is read)."""
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


@pytest.mark.parametrize(
    "first",
    [A_ASSOCIATE_RQ_START, b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"\x00"],
)
def test_anything_else_is_no_header(first: bytes) -> None:
    """A connection that starts with a PDU, a TLS record or an HTTP request has no header."""
    with pytest.raises(ProxyHeaderError, match="no PROXY protocol header"):
        parse(first)
    assert not looks_like_proxy_header(first)


def test_empty_is_incomplete_and_headers_look_like_headers() -> None:
    """Nothing received yet asks for more; both versions are recognised from their start."""
    assert parse(b"") is None
    assert looks_like_proxy_header(b"PROXY TCP4 1.2.3.4")
    assert looks_like_proxy_header(v2_inet("1.2.3.4", 1))
    assert not looks_like_proxy_header(b"POST / HTTP/1.1")


def test_settings_default_off_and_validated() -> None:
    """Off by default; trusted networks are validated CIDRs; `required` needs a balancer;
    HTTP's proxy_protocol cannot go with http.tls."""
    assert ProxyProtocolSettings().trusted == []
    assert ProxyProtocolSettings(trusted="10.0.0.0/8").trusted == ["10.0.0.0/8"]  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="CIDR"):
        ProxyProtocolSettings(trusted=["10.0.0.1/8"])
    with pytest.raises(ValidationError, match="needs trusted"):
        ProxyProtocolSettings(required=True)
    with pytest.raises(ValidationError, match="not supported"):
        HttpSettings(tls=True, proxy_protocol=ProxyProtocolSettings(trusted=["10.0.0.0/8"]))


def test_trust_routes_by_address() -> None:
    """Trusted balancers must send a header; others are served directly, or refused when a
    balancer is required; an IPv4-mapped IPv6 address counts as its IPv4 address."""
    trust = ProxyTrust(ProxyProtocolSettings(trusted=["10.0.0.0/8"]), "network.proxy_protocol")
    assert trust.route("10.1.2.3") is Route.HEADER
    assert trust.route("::ffff:10.1.2.3") is Route.HEADER
    assert trust.route("192.168.0.7") is Route.DIRECT
    required = ProxyTrust(
        ProxyProtocolSettings(trusted=["10.0.0.0/8"], required=True), "network.proxy_protocol"
    )
    assert required.route("192.168.0.7") is Route.REFUSE
    assert required.refused == 1
    assert not ProxyTrust(ProxyProtocolSettings(), "http.proxy_protocol").enabled
