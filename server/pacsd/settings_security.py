"""The security sections of pacsd's configuration: DICOM TLS, receive limits, user identity
and the audit trail (issue 7). `Settings` (settings.py) composes them with the others."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ByteSize, Field, model_validator

from pacsd.policy.identity import check_password_hash, load_public_key
from pacsd.settings_base import Seconds, StrictModel

# BCP 195 (RFC 9325) recommended TLS 1.2 suites: AEAD with forward secrecy only. TLS 1.3
# suites are always on in OpenSSL and are not affected by this string.
BCP195_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)


class ClientCertificates(StrEnum):
    """Whether the TLS listener asks peers for a certificate (verified against the CA file)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


class TlsSettings(StrictModel):
    """DICOM TLS (PS3.15 B.1/B.9, BCP 195): the TLS listener and pacsd's own certificate.

    The same certificate, key and CA file serve outgoing associations to peers marked `tls`.
    """

    enabled: bool = False
    port: int = Field(default=2762, ge=0, le=65535)
    certificate_file: Path | None = None  # PEM, the chain of pacsd's own certificate
    key_file: Path | None = None  # PEM private key
    # The key's password: read from this file or this environment variable; never logged.
    key_password_file: Path | None = None
    key_password_env: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str = BCP195_CIPHERS
    client_certificates: ClientCertificates = ClientCertificates.NONE
    ca_file: Path | None = None  # PEM bundle: verifies client and peer certificates
    handshake_timeout: Seconds = 10.0

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if self.enabled and (self.certificate_file is None or self.key_file is None):
            raise ValueError("enabled needs certificate_file and key_file")
        if self.client_certificates != ClientCertificates.NONE and self.ca_file is None:
            raise ValueError(
                f"client_certificates {self.client_certificates.value} needs ca_file "
                "(the CAs that sign client certificates)"
            )
        if self.key_password_file is not None and self.key_password_env is not None:
            raise ValueError("set key_password_file or key_password_env, not both")
        return self


class LimitsSettings(StrictModel):
    """What one peer may make pacsd receive, hold or inflate."""

    # A C-STORE data set larger than this is refused with 0xA700; nothing is stored.
    max_dataset_size: ByteSize = ByteSize(4 * 1024**3)
    # Deflated Explicit VR Little Endian (PS3.5 A.5): inflating stops, and the C-STORE is
    # refused, past this size or this ratio of inflated to deflated bytes.
    max_inflated_size: ByteSize = ByteSize(512 * 1024**2)
    max_inflate_ratio: int = Field(default=200, ge=1)
    # The A-ASSOCIATE-RQ PDU, read before any maximum PDU length is negotiated.
    max_association_request_size: ByteSize = ByteSize(1024**2)


class UserAccount(StrictModel):
    """A user who may authenticate by user identity negotiation (PS3.7 D.3.3.7)."""

    username: str = Field(min_length=1)
    # A salted hash in PHC form: argon2 ($argon2id$...) or bcrypt ($2b$...), made with
    # `pacsd hash-password`; None accepts the username alone (identity type 1).
    password_hash: Annotated[str, AfterValidator(check_password_hash)] | None = None


class JwtSettings(StrictModel):
    """JSON Web Tokens as user identity (type 5): signature and expiry are verified."""

    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    public_key_files: list[Path] = Field(default_factory=list)  # PEM public keys
    secret_env: str | None = None  # HMAC secret (HS256...) from this environment variable
    audience: str | None = None
    issuer: str | None = None
    username_claim: str = "sub"
    leeway: Annotated[float, Field(ge=0)] = 30.0

    @model_validator(mode="after")
    def _keys_available(self) -> JwtSettings:
        # Checked when the file is loaded, so `pacsd config check` and start-up name the key.
        if not self.public_key_files and self.secret_env is None:
            raise ValueError("jwt needs public_key_files or secret_env to verify tokens")
        if self.secret_env is not None and not os.environ.get(self.secret_env):
            raise ValueError(f"secret_env: environment variable {self.secret_env} is not set")
        for path in self.public_key_files:
            try:
                load_public_key(path)
            except ValueError as exc:
                raise ValueError(f"public_key_files: {exc}") from None
        return self


class IdentitySettings(StrictModel):
    """Who may authenticate; each policy rule says whether identity is required."""

    users: list[UserAccount] = Field(default_factory=list)
    jwt: JwtSettings | None = None

    @model_validator(mode="after")
    def _unique_usernames(self) -> IdentitySettings:
        names = [user.username for user in self.users]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"identity.users: username listed twice: {', '.join(repeated)}")
        return self


class SyslogSettings(StrictModel):
    """Audit events also sent to a syslog collector (RFC 5424; TCP framed by octet counting)."""

    host: str = "127.0.0.1"
    port: int = Field(default=514, ge=1, le=65535)
    protocol: Literal["udp", "tcp"] = "udp"
    app_name: str = Field(default="pacsd", pattern=r"^[\x21-\x7e]{1,48}$")  # RFC 5424 APP-NAME


class AuditSettings(StrictModel):
    """The audit trail (DICOM PS3.15 A.5 / IHE ATNA vocabulary), a stream of its own."""

    enabled: bool = True
    file: Path | None = Path("./var/audit.jsonl")  # JSON lines; None: no file
    fsync: bool = False  # fsync the file after each event (slower; survives power loss)
    # AuditSourceIdentification: AuditSourceID (default "<ae_title>@<host name>") and
    # AuditEnterpriseSiteID (the hospital or site; omitted when None).
    source_id: str | None = None
    enterprise_site_id: str | None = None
    syslog: SyslogSettings | None = None
