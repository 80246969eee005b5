"""User identity verification (pacsd.policy.identity) and its use by the policy engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from pacsd.policy.engine import AssociationRequest, Policy, decide
from pacsd.policy.identity import (
    IdentityClaim,
    IdentityResult,
    IdentityVerifier,
    Outcome,
    hash_password,
    password_matches,
)
from pacsd.policy.rules import PolicyRule
from pacsd.settings import ConfigError, load_settings
from pacsd.settings_security import IdentitySettings, JwtSettings

PASSWORD = "correct horse battery staple"  # noqa: S105 (a test value)
ARGON2_HASH = hash_password(PASSWORD)
BCRYPT_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def users(**accounts: str | None) -> IdentityVerifier:
    """A verifier for `name=password_hash` accounts (None: username only)."""
    settings = IdentitySettings.model_validate(
        {"users": [{"username": name, "password_hash": h} for name, h in accounts.items()]}
    )
    return IdentityVerifier.from_settings(settings)


def claim(kind: int, primary: str, secondary: str = "", response: bool = False) -> IdentityClaim:
    """A User Identity sub-item as the peer sends it."""
    return IdentityClaim(kind, primary.encode(), secondary.encode(), response)


@pytest.mark.parametrize("password_hash", [ARGON2_HASH, BCRYPT_HASH], ids=["argon2", "bcrypt"])
def test_username_and_password_verified_against_the_hash(password_hash: str) -> None:
    """Type 2 with the right password is verified, with the username; a wrong one fails."""
    verifier = users(ris=password_hash)
    good = verifier.verify(claim(2, "ris", PASSWORD))
    assert (good.outcome, good.username, good.identity_type) == (Outcome.VERIFIED, "ris", 2)
    bad = verifier.verify(claim(2, "ris", "guess"))
    assert (bad.outcome, bad.username, bad.reason) == (Outcome.FAILED, None, "wrong password")


def test_unknown_user_fails_and_still_costs_a_hash() -> None:
    """An unknown username fails, after a dummy verification as slow as a real one."""
    verifier = users(ris=ARGON2_HASH)

    def fastest(attempt: Callable[[], IdentityResult]) -> float:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            attempt()
            timings.append(time.perf_counter() - started)
        return min(timings)

    result = verifier.verify(claim(2, "mallory", PASSWORD))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "unknown user")
    known = fastest(lambda: verifier.verify(claim(2, "ris", "guess")))
    unknown = fastest(lambda: verifier.verify(claim(2, "mallory", "guess")))
    assert unknown > 0.5 * known, (unknown, known)


def test_username_only() -> None:
    """Type 1 verifies a user without a password; a user with a password must send it."""
    verifier = users(viewer=None, ris=ARGON2_HASH)
    assert verifier.verify(claim(1, "viewer")).username == "viewer"
    must_send = verifier.verify(claim(1, "ris"))
    assert must_send.outcome is Outcome.FAILED
    assert "password" in must_send.reason
    assert verifier.verify(claim(1, "nobody")).reason == "unknown user"
    assert verifier.verify(claim(2, "viewer", "anything")).username == "viewer"


def test_what_pacsd_cannot_check_is_unverifiable() -> None:
    """Kerberos, SAML, usernames with no users configured, JWT with no keys: unverifiable."""
    assert users(ris=None).verify(claim(3, "ticket")).outcome is Outcome.UNVERIFIABLE
    assert users(ris=None).verify(claim(4, "<saml/>")).outcome is Outcome.UNVERIFIABLE
    assert users().verify(claim(1, "alice")).outcome is Outcome.UNVERIFIABLE
    assert users(ris=None).verify(claim(5, "a.b.c")).outcome is Outcome.UNVERIFIABLE
    assert users().verify(None).outcome is Outcome.NONE


def test_positive_response_only_when_asked_and_verified() -> None:
    """PS3.7 D.3.3.7.2: a zero-length server response for a verified, asking peer; else none."""
    verifier = users(viewer=None)
    assert verifier.verify(claim(1, "viewer", response=True)).server_response() == b""
    assert verifier.verify(claim(1, "viewer")).server_response() is None
    assert verifier.verify(claim(1, "nobody", response=True)).server_response() is None


def test_password_matches_never_raises() -> None:
    """Overlong passwords (bcrypt's 72-byte limit) and broken hashes are simply no match."""
    assert not password_matches(BCRYPT_HASH, b"x" * 100)
    assert not password_matches("$argon2id$garbage", b"x")
    assert not password_matches("plain-text", b"plain-text")


def test_configured_hashes_are_checked() -> None:
    """Plain text, scrypt or a broken argon2 hash stop the configuration; names are unique."""
    for bad in ("secret", "$scrypt$ln=16,r=8,p=1$abc$def", "$argon2id$v=19$nonsense"):
        with pytest.raises(ValidationError, match="pacsd hash-password"):
            IdentitySettings.model_validate({"users": [{"username": "a", "password_hash": bad}]})
    with pytest.raises(ValidationError, match="listed twice"):
        IdentitySettings.model_validate({"users": [{"username": "a"}, {"username": "a"}]})


# --- JSON Web Tokens ------------------------------------------------------------------------


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of `key`."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """An identity provider's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: Any, algorithm: str = "RS256", lifetime: float = 300, **claims: Any) -> bytes:
    """A signed token for user "dr.who" (claims override; None removes a claim)."""
    now = int(time.time())
    body = {"sub": "dr.who", "exp": now + lifetime, "iat": now, **claims}
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(body, key, algorithm=algorithm).encode()


def jwt_verifier(tmp_path: Path, *keys: bytes, **settings: Any) -> IdentityVerifier:
    """A verifier with `keys` written as PEM files and `settings` for identity.jwt."""
    files = []
    for number, key in enumerate(keys):
        files.append(tmp_path / f"idp{number}.pem")
        files[-1].write_bytes(key)
    environ = settings.pop("environ", {})
    # model_construct: the secret comes from `environ`, not from this process's environment.
    jwt_settings = JwtSettings.model_construct(
        **{**_jwt_defaults(), **settings}, public_key_files=files
    )
    return IdentityVerifier.from_settings(
        IdentitySettings.model_construct(users=[], jwt=jwt_settings), environ
    )


def _jwt_defaults() -> dict[str, Any]:
    return {
        "algorithms": ["RS256", "ES256"],
        "secret_env": None,
        "audience": None,
        "issuer": None,
        "username_claim": "sub",
        "leeway": 30.0,
    }


def test_jwt_rs256_verified_with_any_configured_key(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The signature is checked against each public key; the username is the `sub` claim."""
    other = ec.generate_private_key(ec.SECP256R1())
    verifier = jwt_verifier(tmp_path, pem_public(other), pem_public(rsa_key))
    result = verifier.verify(claim(5, token(rsa_key).decode(), response=True))
    assert (result.outcome, result.username) == (Outcome.VERIFIED, "dr.who")
    assert result.server_response() == b""
    assert verifier.verify(claim(5, token(other, "ES256").decode())).username == "dr.who"


def test_jwt_failures_say_why(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """Expired, unsigned by a configured key, without exp, wrong audience or issuer: failed."""
    verifier = jwt_verifier(
        tmp_path, pem_public(rsa_key), audience="pacsd", issuer="https://idp", leeway=5
    )
    good: dict[str, Any] = {"aud": "pacsd", "iss": "https://idp"}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "token expired": token(rsa_key, lifetime=-60, **good),
        "bad signature": token(stranger, **good),
        "token has no exp claim": token(rsa_key, exp=None, **good),
        "wrong audience": token(rsa_key, aud="someone-else", iss="https://idp"),
        "wrong issuer": token(rsa_key, aud="pacsd", iss="https://evil"),
        "token has no sub claim": token(rsa_key, sub=None, **good),
        "malformed token": b"not-a-token",
    }
    assert verifier.verify(claim(5, token(rsa_key, **good).decode())).verified
    for reason, sent in cases.items():
        result = verifier.verify(IdentityClaim(5, sent))
        assert (result.outcome, result.reason) == (Outcome.FAILED, reason), reason
    # Within the leeway an expired token is still accepted.
    assert verifier.verify(IdentityClaim(5, token(rsa_key, lifetime=-2, **good))).verified


def test_jwt_hs256_secret_from_the_environment(tmp_path: Path) -> None:
    """HS256 tokens verify with the secret from secret_env; the RSA keys are never HMAC keys."""
    secret = "a-long-shared-secret-for-hmac-sha256"  # noqa: S105 (a test value)
    verifier = jwt_verifier(
        tmp_path,
        algorithms=["HS256"],
        secret_env="PACSD_TEST_JWT_SECRET",  # noqa: S106 (a variable name)
        environ={"PACSD_TEST_JWT_SECRET": secret},
        username_claim="preferred_username",
    )
    sent = token(secret, "HS256", preferred_username="ris")
    assert verifier.verify(IdentityClaim(5, sent)).username == "ris"
    forged = token("guessed-secret-guessed-secret-32b", "HS256", preferred_username="ris")
    assert verifier.verify(IdentityClaim(5, forged)).reason == "bad signature"
    rs_only = jwt_verifier(tmp_path, pem_public(ec.generate_private_key(ec.SECP256R1())))
    refused = rs_only.verify(IdentityClaim(5, sent))
    assert refused.reason == "token algorithm HS256 is not allowed"
    unsigned = jwt.encode({"sub": "x", "exp": time.time() + 60}, "", algorithm="none")
    assert rs_only.verify(IdentityClaim(5, unsigned.encode())).outcome is Outcome.FAILED


def test_jwt_settings_need_their_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing secret variable or key file stops the configuration with the key named."""
    monkeypatch.delenv("PACSD_TEST_JWT_SECRET", raising=False)
    with pytest.raises(ValidationError, match="PACSD_TEST_JWT_SECRET"):
        JwtSettings(secret_env="PACSD_TEST_JWT_SECRET")  # noqa: S106 (a variable name)
    with pytest.raises(ValidationError, match="cannot read"):
        JwtSettings(public_key_files=[tmp_path / "missing.pem"])
    (tmp_path / "private.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n", encoding="ascii")
    with pytest.raises(ValidationError, match="holds no PEM public key"):
        JwtSettings(public_key_files=[tmp_path / "private.pem"])
    with pytest.raises(ValidationError, match="public_key_files or secret_env"):
        JwtSettings()


# --- the policy engine applies each rule's requirement --------------------------------------


def policy(*rules: dict[str, Any]) -> Policy:
    """Compiled rules, each accepting verification unless it says otherwise."""
    return Policy.compile(
        [PolicyRule.model_validate({"sop_classes": ["verification"], **r}) for r in rules]
    )


def asking(result: IdentityResult | None, username: str | None = None) -> AssociationRequest:
    """An association request from CT1 carrying `result`."""
    name = result.username if result else username
    return AssociationRequest("CT1", "PACSD", "10.0.0.1", username=name, identity=result)


VERIFIED = IdentityResult(Outcome.VERIFIED, 2, "ris", "")
FAILED = IdentityResult(Outcome.FAILED, 2, None, "wrong password")
NONE = IdentityResult(Outcome.NONE, reason="no user identity sent")
KERBEROS = IdentityResult(Outcome.UNVERIFIABLE, 3, None, "Kerberos service ticket is not supported")


@pytest.mark.parametrize(
    ("requirement", "result", "accepted"),
    [
        ("optional", VERIFIED, True),
        ("optional", NONE, True),
        ("optional", KERBEROS, True),
        ("optional", FAILED, False),
        ("required", VERIFIED, True),
        ("required", NONE, False),
        ("required", KERBEROS, False),
        ("required", FAILED, False),
        ("not-accepted", FAILED, True),
        ("not-accepted", NONE, True),
    ],
)
def test_rule_requirement(requirement: str, result: IdentityResult, accepted: bool) -> None:
    """not-accepted ignores, optional rejects a failed identity, required needs a verified one."""
    decision = decide(asking(result), policy({"name": "r", "user_identity": requirement}))
    assert decision.accepted is accepted
    if not accepted:
        assert decision.rejection is not None
        assert (decision.rejection.result, decision.rejection.source) == (1, 2)
        assert result.reason in decision.reason


def test_username_matcher_sees_only_verified_names() -> None:
    """A failed claim carries no username, so a username rule cannot accept it; the rule it
    would fit but for the identity rejects it as an identity problem (1, 2, 1), and no later
    rule gets to accept the peer without its identity."""
    rules = policy(
        {"name": "alice", "match": {"username": "ris"}},
        {"name": "others", "user_identity": "not-accepted"},
    )
    assert decide(asking(VERIFIED), rules).rule == "alice"
    refused = decide(asking(FAILED), rules)
    assert not refused.accepted
    assert refused.rule == "alice"
    assert refused.rejection is not None
    assert (refused.rejection.result, refused.rejection.source, refused.rejection.reason) == (
        1, 2, 1
    )  # fmt: skip


def test_not_accepted_rule_cannot_match_a_username() -> None:
    """A rule that ignores identities and matches a username is a configuration error."""
    with pytest.raises(ValidationError, match="does not accept user identities"):
        PolicyRule.model_validate(
            {
                "name": "r",
                "sop_classes": ["verification"],
                "match": {"username": "ris"},
                "user_identity": "not-accepted",
            }
        )


def test_config_error_never_shows_a_plain_password(tmp_path: Path) -> None:
    """A password written where its hash belongs is refused without being printed."""
    path = tmp_path / "pacsd.yaml"
    path.write_text(
        "identity:\n  users:\n    - {username: ris, password_hash: Summer2024!}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "identity.users.0.password_hash" in str(refused.value)
    assert "Summer2024!" not in str(refused.value)
