"""User identity negotiation (PS3.7 D.3.3.7): is the identity a peer sent one pacsd trusts?

`IdentityVerifier.verify(claim)` answers VERIFIED (with the username), FAILED (the credentials
were checked and are wrong), UNVERIFIABLE (pacsd has no means to check this kind: Kerberos (3)
and SAML (4) always; usernames when no user is configured; JWT when `identity.jwt` is not set) or
NONE (nothing sent). What follows from the answer is the policy rule's business (engine.py).

Passwords are checked against salted hashes with argon2-cffi ($argon2id$, $argon2i$, $argon2d$)
or bcrypt ($2b$, $2a$, $2y$); an unknown user still costs one argon2 verification, so the answer
time does not tell which usernames exist. Tokens are verified with PyJWT: signature against the
configured public keys (each tried) or the HMAC secret, `exp` required, audience and issuer when
configured. Nothing here logs, and no reason string ever contains a password or a token.
Keys and the secret are read once, when the verifier is built from the settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

if TYPE_CHECKING:
    from pacsd.settings_security import IdentitySettings, JwtSettings

# PS3.7 Table D.3-14: User-Identity-Type.
USERNAME, USERNAME_AND_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5
IDENTITY_TYPE_NAMES = {
    USERNAME: "username",
    USERNAME_AND_PASSCODE: "username and passcode",
    KERBEROS: "Kerberos service ticket",
    SAML: "SAML assertion",
    JWT: "JSON web token",
}
ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
BCRYPT_PREFIXES = ("$2b$", "$2a$", "$2y$")
HASH_PREFIXES = ARGON2_PREFIXES + BCRYPT_PREFIXES

_HASHER = PasswordHasher()  # argon2-cffi's defaults (RFC 9106 low-memory profile)
# The hash of a random, discarded password with the same parameters as `pacsd hash-password`:
# verified (and failed) for unknown usernames so that they cost as much as known ones.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$RR9nZmtSBmtQA0BN0lt+OA"
    "$rnCXaiHPohaHhPqMPr72GPJJLRYBVwqJ/M1SZrut6yQ"
)


class Outcome(StrEnum):
    """What verifying a user identity found."""

    NONE = "none"  # no user identity item in the A-ASSOCIATE-RQ
    VERIFIED = "verified"
    FAILED = "failed"  # checked and wrong: unknown user, wrong password, bad token
    UNVERIFIABLE = "unverifiable"  # pacsd cannot check this kind of identity


@dataclass(frozen=True)
class IdentityClaim:
    """The User Identity sub-item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1), as bytes."""

    identity_type: int
    primary_field: bytes
    secondary_field: bytes = b""
    positive_response_requested: bool = False


@dataclass(frozen=True)
class IdentityResult:
    """The verdict on a claim; `username` is set only when VERIFIED; `reason` has no secret."""

    outcome: Outcome
    identity_type: int | None = None
    username: str | None = None
    reason: str = ""
    positive_response_requested: bool = False

    @property
    def verified(self) -> bool:
        """True when the identity was verified."""
        return self.outcome is Outcome.VERIFIED

    def server_response(self) -> bytes | None:
        """The A-ASSOCIATE-AC Server-response (PS3.7 D.3.3.7.2), None when none is sent.

        Sent only when the peer asked for a positive response and the identity was verified;
        zero-length for types 1 and 2 (as the standard says) and for JWT (the standard defines
        no content for it, and echoing the token back would tell the peer nothing).
        """
        return b"" if self.verified and self.positive_response_requested else None


NO_IDENTITY = IdentityResult(Outcome.NONE, reason="no user identity sent")


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies JSON Web Tokens against keys read once from the configuration."""

    algorithms: tuple[str, ...]
    public_keys: tuple[bytes, ...] = ()
    secret: bytes | None = None
    audience: str | None = None
    issuer: str | None = None
    username_claim: str = "sub"
    leeway: float = 30.0

    @classmethod
    def from_settings(
        cls, settings: JwtSettings, environ: Mapping[str, str] | None = None
    ) -> JwtVerifier:
        """Read the PEM public keys and the HMAC secret; ValueError names what is missing."""
        keys = tuple(load_public_key(path) for path in settings.public_key_files)
        secret: bytes | None = None
        if settings.secret_env is not None:
            value = (os.environ if environ is None else environ).get(settings.secret_env)
            if not value:
                raise ValueError(
                    f"identity.jwt.secret_env: environment variable {settings.secret_env} "
                    "is not set or empty"
                )
            secret = value.encode("utf-8")
        return cls(
            algorithms=tuple(settings.algorithms),
            public_keys=keys,
            secret=secret,
            audience=settings.audience,
            issuer=settings.issuer,
            username_claim=settings.username_claim,
            leeway=settings.leeway,
        )

    def verify(self, token: bytes) -> tuple[str | None, str]:
        """(username, "") for a valid token, else (None, the cause in words)."""
        import jwt  # PyJWT and its cryptography (~40 ms): not imported before every start

        try:
            text = token.decode("ascii")
            algorithm = str(jwt.get_unverified_header(text).get("alg", ""))
        except (UnicodeDecodeError, jwt.InvalidTokenError):
            return None, "malformed token"
        if algorithm not in self.algorithms:
            return None, f"token algorithm {algorithm or 'none'} is not allowed"
        keys: Sequence[bytes] = (
            ([self.secret] if self.secret else [])
            if algorithm.startswith("HS")
            else self.public_keys
        )
        if not keys:
            return None, f"no key configured for token algorithm {algorithm}"
        for key in keys:
            outcome = self._decode(text, key, algorithm)
            if outcome is not None:
                return outcome
        return None, "bad signature"

    def _decode(self, token: str, key: bytes, algorithm: str) -> tuple[str | None, str] | None:
        """The verdict with `key`; None when the signature does not fit this key."""
        import jwt  # loaded by `verify`

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
            return None
        except jwt.ExpiredSignatureError:
            return None, "token expired"
        except jwt.MissingRequiredClaimError as exc:
            return None, f"token has no {exc.claim} claim"
        except jwt.InvalidAudienceError:
            return None, "wrong audience"
        except jwt.InvalidIssuerError:
            return None, "wrong issuer"
        except jwt.InvalidTokenError as exc:
            return None, f"invalid token ({type(exc).__name__})"
        username = claims.get(self.username_claim)
        if not isinstance(username, str) or not username:
            return None, f"token has no {self.username_claim} claim"
        return username, ""


def load_public_key(path: Path) -> bytes:
    """The PEM public key in `path`, checked; ValueError says what is wrong with the file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{path} holds no PEM public key") from None
    return pem


@dataclass(frozen=True)
class IdentityVerifier:
    """The configured users (username -> password hash or None) and the JWT verifier."""

    users: Mapping[str, str | None] = field(default_factory=dict)
    jwt: JwtVerifier | None = None

    @classmethod
    def from_settings(
        cls, settings: IdentitySettings, environ: Mapping[str, str] | None = None
    ) -> IdentityVerifier:
        """Build from the `identity` section; reads JWT keys and the secret (ValueError)."""
        users = {user.username: user.password_hash for user in settings.users}
        token = JwtVerifier.from_settings(settings.jwt, environ) if settings.jwt else None
        return cls(users, token)

    def verify(self, claim: IdentityClaim | None) -> IdentityResult:
        """Verify the identity a peer sent (None: it sent none)."""
        if claim is None:
            return NO_IDENTITY
        kind = claim.identity_type
        if kind in (USERNAME, USERNAME_AND_PASSCODE) and self.users:
            username, reason = self._verify_user(claim)
        elif kind == JWT and self.jwt is not None:
            username, reason = self.jwt.verify(claim.primary_field)
        else:
            return self._result(claim, Outcome.UNVERIFIABLE, None, _unverifiable(kind))
        outcome = Outcome.VERIFIED if username is not None else Outcome.FAILED
        return self._result(claim, outcome, username, reason)

    @staticmethod
    def _result(
        claim: IdentityClaim, outcome: Outcome, username: str | None, reason: str
    ) -> IdentityResult:
        return IdentityResult(
            outcome, claim.identity_type, username, reason, claim.positive_response_requested
        )

    def _verify_user(self, claim: IdentityClaim) -> tuple[str | None, str]:
        try:
            name = claim.primary_field.decode("utf-8")  # PS3.7 D.3.3.7.1: UTF-8
        except UnicodeDecodeError:
            return None, "username is not UTF-8"
        known = name in self.users
        password_hash = self.users.get(name)
        if claim.identity_type == USERNAME:
            if not known:
                return None, "unknown user"
            if password_hash is not None:
                return None, "user must send a password (identity type 2)"
            return name, ""
        return self.check_password(name, claim.secondary_field)

    def check_password(self, name: str, password: bytes) -> tuple[str | None, str]:
        """(name, "") when `password` is the user's (or the account needs none), else (None,
        why); the HTTP side's basic authentication asks the same question."""
        known = name in self.users
        password_hash = self.users.get(name)
        # A hash is verified whatever the user, so that timing tells nothing.
        matches = password_matches(password_hash or _DUMMY_HASH, password)
        if not known:
            return None, "unknown user"
        if password_hash is None:
            return name, ""  # the account needs no password; the one sent does not matter
        return (name, "") if matches else (None, "wrong password")


def _unverifiable(kind: int) -> str:
    if kind in (USERNAME, USERNAME_AND_PASSCODE):
        return "no users are configured"
    if kind == JWT:
        return "JSON web tokens are not configured"
    return f"{IDENTITY_TYPE_NAMES.get(kind, f'identity type {kind}')} is not supported"


# Password checks at once: each argon2 verification holds 64 MiB and ~0.1 s of a core, so a
# burst of logins (or of guesses) waits its turn instead of exhausting memory.
_PASSWORD_CHECKS = threading.BoundedSemaphore(2)


def password_matches(password_hash: str, password: bytes) -> bool:
    """True when `password` fits the argon2 or bcrypt `password_hash`; never raises."""
    with _PASSWORD_CHECKS:
        return _password_matches(password_hash, password)


def _password_matches(password_hash: str, password: bytes) -> bool:
    try:
        if password_hash.startswith(ARGON2_PREFIXES):
            return _HASHER.verify(password_hash, password)
        if password_hash.startswith(BCRYPT_PREFIXES):
            return bcrypt.checkpw(password, password_hash.encode("ascii"))
    except (VerificationError, InvalidHashError, ValueError):
        return False  # bcrypt refuses passwords over 72 bytes: they cannot match
    return False


def hash_password(password: str) -> str:
    """An argon2id hash in PHC form, with argon2-cffi's default parameters and a random salt."""
    return _HASHER.hash(password)


def check_password_hash(value: str) -> str:
    """Validate a configured hash's form (settings); ValueError names the supported ones."""
    if value.startswith(ARGON2_PREFIXES):
        try:
            extract_parameters(value)
        except InvalidHashError:
            raise ValueError(
                "not a valid argon2 hash (make one with `pacsd hash-password`)"
            ) from None
        return value
    if value.startswith(BCRYPT_PREFIXES) and len(value) == 60:
        return value
    raise ValueError(
        "password_hash must be an argon2 ($argon2id$...) or bcrypt ($2b$...) hash; "
        "make one with `pacsd hash-password`"
    )
