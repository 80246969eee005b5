"""DICOM TLS: the server and client SSL contexts, the bounded handshake, the peer's subject.

PS3.15 B.1 (TLS Secure Transport Connection Profile) and B.9 (BCP 195 profile): TLS 1.2 or
later, AEAD suites with forward secrecy (settings.BCP195_CIPHERS), certificates in PEM. One place
builds both contexts from `network.tls`: the listener's (pacsd's certificate, client
certificates verified against ca_file when asked for) and the one pacsd uses when it connects
to a peer marked `tls: true` (peer verified against ca_file and its name checked, pacsd's
certificate presented as client certificate).

Problems with the files stop start-up with a `TlsSetupError` naming the key; the key's
password never appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import ssl
from pathlib import Path

from pacsd.settings import Peer
from pacsd.settings_security import ClientCertificates, TlsSettings

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {
    ClientCertificates.NONE: ssl.CERT_NONE,
    ClientCertificates.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientCertificates.REQUIRED: ssl.CERT_REQUIRED,
}


class TlsSetupError(Exception):
    """A TLS file or setting that cannot be used; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"network.tls.{key}: {problem}")
        self.key = key


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The TLS listener's context: pacsd's certificate, client certificates as configured."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, tls)
    _load_identity(context, tls)
    context.verify_mode = VERIFY_MODES[tls.client_certificates]
    if tls.client_certificates != ClientCertificates.NONE and tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    # peer_subject's parser, loaded here (before the fork, shared by the workers) rather than
    # by the first TLS association, on the event loop.
    importlib.import_module("cryptography.x509")
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context of outgoing TLS associations: the peer's certificate is verified against
    ca_file (else the system's CAs) and its name checked; pacsd's certificate, when
    configured, is presented to peers that ask for one."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, tls)  # CERT_REQUIRED, check_hostname
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate_file is not None and tls.key_file is not None:
        _load_identity(context, tls)
    return context


def _base_context(protocol: int, tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    # PS3.15 B.9 / BCP 195: never below TLS 1.2; the operator may require 1.3.
    context.minimum_version = MIN_VERSIONS[tls.min_version]
    try:
        context.set_ciphers(tls.ciphers)
    except ssl.SSLError:
        raise TlsSetupError("ciphers", "OpenSSL can select no cipher from this list") from None
    return context


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsSetupError("ca_file", f"cannot load {ca_file}: {_reason(exc)}") from None


def _load_identity(context: ssl.SSLContext, tls: TlsSettings) -> None:
    """pacsd's certificate chain and private key, the key decrypted with its password."""
    certificate, key = tls.certificate_file, tls.key_file
    assert certificate is not None, "settings: TLS needs certificate_file"
    assert key is not None, "settings: TLS needs key_file"
    _check_certificate(certificate)
    password = _key_password(tls)
    _check_key(tls, key, password)
    try:
        # Always a callback: without one OpenSSL would prompt on the terminal for a password.
        context.load_cert_chain(str(certificate), str(key), password=lambda: password or b"")
    except OSError as exc:
        reason = _reason(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise TlsSetupError("key_file", f"{key} is not the key of certificate_file") from None
        raise TlsSetupError("key_file", f"cannot load {key}: {reason}") from None


def _check_certificate(path: Path) -> None:
    """Blame the certificate file, not the key, when it holds no PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except OSError as exc:
        raise TlsSetupError("certificate_file", f"cannot load {path}: {_reason(exc)}") from None


def _check_key(tls: TlsSettings, key: Path, password: bytes | None) -> None:
    """Decrypt the key once here, where a wrong password and a bad file can be told apart
    (OpenSSL reports both as "PEM lib")."""
    try:
        pem = key.read_bytes()
    except OSError as exc:
        raise TlsSetupError("key_file", f"cannot read {key}: {_reason(exc)}") from None
    # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY" or the traditional "Proc-Type: 4,ENCRYPTED".
    encrypted = b"ENCRYPTED" in pem
    if encrypted and password is None:
        problem = f"{key} is encrypted: set key_password_file or key_password_env"
        raise TlsSetupError("key_file", problem)
    # cryptography (~30 ms of imports) only where TLS is configured, not before every start.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(pem, password if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            source = "key_password_file" if tls.key_password_file else "key_password_env"
            raise TlsSetupError(source, f"wrong password for {key}") from None
        raise TlsSetupError("key_file", f"{key} holds no usable PEM private key") from None


def _key_password(tls: TlsSettings) -> bytes | None:
    """The key's password from key_password_file or key_password_env; None without one."""
    if tls.key_password_file is not None:
        try:
            return tls.key_password_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            problem = f"cannot read {tls.key_password_file}: {_reason(exc)}"
            raise TlsSetupError("key_password_file", problem) from None
    if tls.key_password_env is not None:
        value = os.environ.get(tls.key_password_env)
        if value is None:
            problem = f"the environment variable {tls.key_password_env} is not set"
            raise TlsSetupError("key_password_env", problem)
        return value.encode("utf-8")
    return None


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.args[-1])
    return exc.strerror or str(exc)


def handshake_failure(exc: BaseException, timeout: float) -> str:
    """One short reason for a failed handshake, for the log."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) or "taking longer" in str(exc):
        return f"no handshake within {timeout:g} s"  # asyncio's: ConnectionAbortedError
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.args[-1])
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return repr(exc)


def peer_subject(sock: ssl.SSLSocket | ssl.SSLObject) -> str | None:
    """The verified peer certificate's subject as an RFC 4514 string; None without one."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509  # imported by server_context, before the loop runs

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class _Outgoing:
    """The client context of outgoing TLS associations, built once."""

    settings: TlsSettings | None = None
    context: ssl.SSLContext | None = None


def configure_outgoing(tls: TlsSettings, build_now: bool) -> None:
    """Keep `network.tls` for outgoing associations; build the context now (so that a bad
    file stops start-up) when a peer is marked `tls` or the listener uses TLS."""
    _Outgoing.settings, _Outgoing.context = tls, None
    if build_now:
        _Outgoing.context = client_context(tls)


def tls_args_for(peer: Peer) -> tuple[ssl.SSLContext, str] | None:
    """How to connect to `peer`: None for a plain peer; for a peer marked `tls`, the client
    context and the name its certificate must carry."""
    if not peer.tls:
        return None
    if _Outgoing.context is None:
        _Outgoing.context = client_context(_Outgoing.settings or TlsSettings())
    return _Outgoing.context, peer.tls_server_name or peer.host
