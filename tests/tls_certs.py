"""Certificates for the DICOM TLS tests (made by trustme in the test's folder) and TLS clients.

One CA signs pacsd's certificate (for 127.0.0.1 and localhost) and the client certificates, each
with its own subject; a second CA signs certificates pacsd must not trust.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pynetdicom import AE

from tests.harness import VERIFICATION
from tests.scu import settled

KEY_PASSWORD = "pacsd-test-key-password"  # noqa: S105 - a test key's password
SERVER_NAME = "localhost"  # in pacsd's certificate, with 127.0.0.1


@dataclass(frozen=True)
class KeyPair:
    """A certificate (PEM, with its chain), its private key and its subject (RFC 4514)."""

    certificate: Path
    key: Path
    subject: str


@dataclass
class Pki:
    """The CA files and certificates of one test."""

    folder: Path
    ca: trustme.CA
    ca_file: Path
    server: KeyPair

    def client(self, name: str) -> KeyPair:
        """A client certificate with subject CN=`name`,OU=Radiology,O=Hospital."""
        return _issue(self.folder, self.ca, name, f"client-{name}")

    def foreign_client(self, name: str) -> KeyPair:
        """A client certificate with the same subject from a CA that pacsd does not trust."""
        foreign = trustme.CA(organization_name="Elsewhere")
        return _issue(self.folder, foreign, name, f"foreign-{name}")

    def encrypted_server_key(self, password: str = KEY_PASSWORD) -> Path:
        """pacsd's key again, encrypted (PKCS#8) with `password`."""
        key = serialization.load_pem_private_key(self.server.key.read_bytes(), password=None)
        path = self.folder / "server-key-encrypted.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password.encode()),
            )
        )
        return path

    def listener(self, **overrides: Any) -> dict[str, Any]:
        """A `network.tls` section: the TLS listener on an ephemeral port."""
        section: dict[str, Any] = {
            "enabled": True,
            "port": 0,
            "certificate_file": str(self.server.certificate),
            "key_file": str(self.server.key),
            "ca_file": str(self.ca_file),
            "handshake_timeout": 5,
        }
        return {**section, **overrides}


def make_pki(folder: Path) -> Pki:
    """A CA and pacsd's certificate in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Hospital")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = _issue(folder, ca, SERVER_NAME, "server", identities=("127.0.0.1", SERVER_NAME))
    return Pki(folder=folder, ca=ca, ca_file=ca_file, server=server)


def _issue(
    folder: Path, ca: trustme.CA, name: str, stem: str, identities: tuple[str, ...] = ()
) -> KeyPair:
    leaf = ca.issue_cert(
        *(identities or (f"{name}.example.org",)),
        common_name=name,
        organization_name="Hospital",
        organization_unit_name="Radiology",
    )
    certificate, key = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    pem = leaf.cert_chain_pems[0].bytes()
    subject = x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
    return KeyPair(certificate, key, subject)


def client_context(
    pki: Pki,
    client: KeyPair | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that trusts the test CA and presents `client`, if given."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if client is not None:
        context.load_cert_chain(str(client.certificate), str(client.key))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def tls_echo(
    port: int, context: ssl.SSLContext, calling: str = "TESTSCU", timeout: float = 10
) -> tuple[str, int | None]:
    """One TLS association with one C-ECHO: ("accepted", status), ("rejected", None) or
    ("failed", None) when no association came about (handshake refused, connection closed)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    assoc = settled(
        ae.associate("127.0.0.1", port, ae_title="PACSD", tls_args=(context, SERVER_NAME))
    )
    if assoc.is_rejected:
        return "rejected", None
    if not assoc.is_established:
        return "failed", None
    try:
        response = assoc.send_c_echo()
        return "accepted", int(response.Status) if "Status" in response else None
    finally:
        assoc.release()


def wait_for_tls_echo(port: int, context: ssl.SSLContext, timeout: float = 30) -> None:
    """Poll a TLS C-ECHO until it succeeds, bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tls_echo(port, context, timeout=5) == ("accepted", 0x0000):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no TLS C-ECHO answer on port {port} within {timeout} s")
