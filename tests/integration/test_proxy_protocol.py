"""pacsd behind a real HAProxy (Debian's haproxy, mode tcp) that sends PROXY headers (v1 with
`send-proxy`, v2 with `send-proxy-v2`): the client's address, not the balancer's, reaches the
policies, /associations, the audit trail, the logs and the HTTP rules.

The balancer listens on 127.0.0.1 and connects to pacsd from 127.0.0.1; the clients connect to
it from other loopback addresses (127.0.0.2, 127.0.0.3), so the client's address and the
balancer's differ. Every HAProxy started here is stopped by its pid.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from tests.harness import VERIFICATION, PacsdProcess, echo
from tests.scu import rejection_of, settled
from tests.tls_certs import SERVER_NAME, Pki, client_context, make_pki

ServerFactory = Callable[..., PacsdProcess]
MODALITY, OTHER = "127.0.0.2", "127.0.0.3"  # client addresses, distinct from the balancer's
BALANCER = "127.0.0.1"
WAIT_S = 15.0

# Debian installs it in /usr/sbin, which a user's PATH may not hold.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"
)


def free_port() -> int:
    """A loopback port free now (for HAProxy's frontends)."""
    with socket.socket() as sock:
        sock.bind((BALANCER, 0))
        return int(sock.getsockname()[1])


class Balancer:
    """A HAProxy process in TCP mode with one frontend per backend given."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}

    def start(self, backends: dict[str, tuple[int, str]]) -> Balancer:
        """`backends`: name -> (pacsd port, server options such as send-proxy-v2)."""
        sections = [
            "global\n  maxconn 256\n",
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n",
        ]
        for name, (port, options) in backends.items():
            self.ports[name] = free_port()
            sections.append(
                f"frontend {name}\n  bind {BALANCER}:{self.ports[name]}\n"
                f"  default_backend {name}_pacsd\n"
                f"backend {name}_pacsd\n"
                f"  server pacsd {BALANCER}:{port} {options} source {BALANCER}\n"
            )
        config = self.folder / "haproxy.cfg"
        config.write_text("\n".join(sections), encoding="utf-8")
        check = subprocess.run(
            [str(HAPROXY), "-c", "-q", "-f", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = subprocess.Popen(
            [str(HAPROXY), "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for port in self.ports.values():
            self._wait_listening(port)
        return self

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            assert self.process.poll() is None, "haproxy exited"
            try:
                with socket.create_connection((BALANCER, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"haproxy does not listen on {port} within {WAIT_S} s")

    def stop(self) -> None:
        """Stop this HAProxy (by its pid), bounded."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Callable[[dict[str, tuple[int, str]]], Balancer]]:
    """Start HAProxy balancers for a test; each is stopped at the end."""
    started: list[Balancer] = []

    def start(backends: dict[str, tuple[int, str]]) -> Balancer:
        folder = tmp_path / f"haproxy{len(started)}"
        folder.mkdir()
        started.append(Balancer(folder))
        return started[-1].start(backends)

    yield start
    for one in started:
        one.stop()


def associate_from(
    source: str, port: int, tls: tuple[Any, str] | None = None, timeout: float = 10
) -> Association:
    """An association requested from address `source` (pynetdicom binds its socket there)."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    return settled(
        ae.associate(BALANCER, port, ae_title="PACSD", bind_address=(source, 0), tls_args=tls)
    )


def status(server: PacsdProcess) -> dict[str, Any]:
    """GET /associations, directly (the HTTP side is not behind the balancer here)."""
    with urllib.request.urlopen(server.status_url, timeout=5) as response:  # noqa: S310
        return dict(json.load(response))


def http_get(source: str, port: int, path: str) -> int:
    """The status of GET `path` on 127.0.0.1:`port`, sent from address `source`."""
    connection = http.client.HTTPConnection(BALANCER, port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def closed_without_answer(source: str, port: int, first: bytes) -> bool:
    """True when the server closes a connection from `source` that sent `first`, unanswered."""
    with socket.create_connection((BALANCER, port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(first)
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True


MODALITY_ONLY = [
    {"name": "modality", "match": {"address": f"{MODALITY}/32"}, "sop_classes": ["verification"]}
]


def test_the_modality_address_reaches_policies_status_audit_and_logs_through_v1_and_v2(
    pacsd_server: ServerFactory,
    balancer: Callable[[dict[str, tuple[int, str]]], Balancer],
) -> None:
    """Behind HAProxy (send-proxy-v2 and send-proxy), a policy rule on the modality's address
    accepts it and no other client; /associations, the audit file and the log lines name
    127.0.0.2, not the balancer. A connection from the balancer's address without header, and
    (with `required`) a direct one from elsewhere, are closed with a reason logged."""
    server = pacsd_server(
        network={"proxy_protocol": {"trusted": [f"{BALANCER}/32"], "required": True}},
        policies=MODALITY_ONLY,
        ready_by_echo=False,
    )
    proxy = balancer({"v2": (server.port, "send-proxy-v2"), "v1": (server.port, "send-proxy")})
    for version in ("v2", "v1"):
        assoc = associate_from(MODALITY, proxy.ports[version])
        assert assoc.is_established, f"{version}: the modality's association was not accepted"
        try:
            assert assoc.send_c_echo().Status == 0x0000
            [listed] = status(server)["associations"]
            assert listed["peer_address"] == MODALITY
        finally:
            assoc.release()
        other = associate_from(OTHER, proxy.ports[version])
        assert rejection_of(other) == (1, 1, 3), f"{version}: 127.0.0.3 was not rejected"

    accepted = server.accepted_associations(2)
    assert {line["peer"].split(":")[0] for line in accepted} == {MODALITY}
    rejected = server.wait_for("association rejected", 2)
    assert {line["peer"].split(":")[0] for line in rejected} == {OTHER}

    # From the balancer's own address, no header: not served, and said why.
    assert not echo(server.host, server.port)
    [failed] = server.wait_for("connection closed: no valid PROXY header from a trusted balancer")
    assert "no PROXY protocol header" in failed["reason"]
    # `required`: a client that bypasses the balancer is refused at accept.
    assert not associate_from(MODALITY, server.port).is_established
    server.wait_for(
        "connection closed: not from a trusted balancer, and a PROXY header is required"
    )
    # The C-ECHO associations' Login/Logout are counted per peer and written by the stop at the
    # latest (audit/sessions.py); the rejection at once.
    assert server.stop() == 0
    audit = (server.config_path.parent / "audit.jsonl").read_text(encoding="utf-8")
    assert MODALITY in audit
    assert OTHER in audit


def test_a_proxy_header_from_an_untrusted_address_is_refused(
    pacsd_server: ServerFactory,
    balancer: Callable[[dict[str, tuple[int, str]]], Balancer],
) -> None:
    """pacsd trusts only 10.0.0.0/8: HAProxy's header (from 127.0.0.1) is a protocol error,
    closed and logged as "PROXY header from an untrusted address", for v2 and v1; a direct
    association without header is still served."""
    server = pacsd_server(network={"proxy_protocol": {"trusted": ["10.0.0.0/8"]}})
    proxy = balancer({"v2": (server.port, "send-proxy-v2"), "v1": (server.port, "send-proxy")})
    for count, version in enumerate(("v2", "v1"), start=1):
        assoc = associate_from(MODALITY, proxy.ports[version])
        assert not assoc.is_established
        assert not assoc.is_rejected
        [*_, line] = server.wait_for(
            "PROXY header from an untrusted address; connection closed", count
        )
        assert line["peer"].startswith(f"{BALANCER}:")
    assert echo(server.host, server.port)
    assert all(line["peer"].startswith(f"{BALANCER}:") for line in server.accepted_associations(0))


def test_dicom_tls_behind_the_balancer_header_before_handshake(
    pacsd_server: ServerFactory,
    balancer: Callable[[dict[str, tuple[int, str]]], Balancer],
    tmp_path: Path,
) -> None:
    """TLS passthrough: HAProxy sends the v2 header in clear, then the client's TLS bytes;
    pacsd reads the header, then makes the handshake, and the policy sees 127.0.0.2."""
    pki: Pki = make_pki(tmp_path / "pki")
    server = pacsd_server(
        network={
            "tls": {
                "enabled": True,
                "port": 0,
                "certificate_file": str(pki.server.certificate),
                "key_file": str(pki.server.key),
                "handshake_timeout": 5,
            },
            "proxy_protocol": {"trusted": [f"{BALANCER}/32"]},
        },
        policies=MODALITY_ONLY,
        ready_by_echo=False,
    )
    proxy = balancer({"tls": (server.tls_port, "send-proxy-v2")})
    tls = (client_context(pki), SERVER_NAME)
    assoc = associate_from(MODALITY, proxy.ports["tls"], tls=tls)
    assert assoc.is_established
    try:
        [listed] = status(server)["associations"]
        assert listed["peer_address"] == MODALITY
        assert listed["tls_version"] in ("TLSv1.2", "TLSv1.3")
    finally:
        assoc.release()
    assert rejection_of(associate_from(OTHER, proxy.ports["tls"], tls=tls)) == (1, 1, 3)


def test_http_rules_see_the_client_address_through_the_balancer(
    pacsd_server: ServerFactory,
    balancer: Callable[[dict[str, tuple[int, str]]], Balancer],
) -> None:
    """HTTP behind HAProxy (send-proxy-v2): a rule on 127.0.0.2 lets it read, 127.0.0.1 through
    the same balancer gets 403; a request without header from the balancer's address is
    closed unanswered, and a header from an untrusted address too."""
    rules = [{"name": "modality-host", "address": f"{MODALITY}/32", "allow": ["read"]}]
    server = pacsd_server(http={"proxy_protocol": {"trusted": [f"{BALANCER}/32"]}, "rules": rules})
    port = int(server.http_url.rsplit(":", 1)[1])
    proxy = balancer({"http": (port, "send-proxy-v2")})
    assert http_get(MODALITY, proxy.ports["http"], "/conformance") == 200
    assert http_get(BALANCER, proxy.ports["http"], "/conformance") == 403
    assert http_get(MODALITY, proxy.ports["http"], "/healthz") == 200
    assert closed_without_answer(BALANCER, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    server.wait_for("connection closed: no valid PROXY header from a trusted balancer")
    untrusted = b"PROXY TCP4 10.9.9.9 127.0.0.1 1234 80\r\nGET /healthz HTTP/1.1\r\n\r\n"
    assert closed_without_answer(MODALITY, port, untrusted)
    server.wait_for("PROXY header from an untrusted address; connection closed")
