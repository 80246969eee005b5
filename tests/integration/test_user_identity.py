"""User identity negotiation (PS3.7 D.3.3.7) against a real pacsd and a pynetdicom requestor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from pacsd.policy.identity import hash_password, password_matches
from tests.harness import COMMAND_TIMEOUT_S, PacsdProcess, base_config
from tests.scu import established, rejection_of, request

PASSWORD = "ris-Passw0rd-for-tests"  # noqa: S105 (a test value)
REJECTED_FOR_IDENTITY = (1, 2, 1)  # rejected-permanent, ACSE service-provider, no reason given
ServerFactory = Callable[..., PacsdProcess]


def hash_password_cli(password: str) -> subprocess.CompletedProcess[str]:
    """`pacsd hash-password --stdin` with `password` on stdin (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "pacsd", "hash-password", "--stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def identity(kind: int, primary: bytes, secondary: bytes = b"", response: bool = False) -> Any:
    """A User Identity Negotiation item as the requestor sends it."""
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if secondary:
        item.secondary_field = secondary
    item.positive_response_requested = response
    return item


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    """The identity provider's token signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, idp_key: rsa.RSAPrivateKey
) -> Iterator[PacsdProcess]:
    """One pacsd with users (the password hashed by `pacsd hash-password`), JWT and four rules."""
    folder = tmp_path_factory.mktemp("identity")
    key_file = folder / "idp.pem"
    key_file.write_bytes(
        idp_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    made = hash_password_cli(PASSWORD)
    assert made.returncode == 0, made.stderr
    verification = {"sop_classes": ["verification"]}
    config = base_config(
        folder,
        identity={
            "users": [
                {"username": "ris", "password_hash": made.stdout.strip()},
                {"username": "viewer"},
            ],
            "jwt": {"algorithms": ["RS256"], "public_key_files": [str(key_file)]},
        },
        policies=[
            {"name": "secure", "match": {"calling_ae": "SECURE*"}, "user_identity": "required"},
            {"name": "ignore", "match": {"calling_ae": "IGNORE*"}, "user_identity": "not-accepted"},
            {"name": "ris-only", "match": {"username": "ris"}},
            {"name": "others"},
        ],
    )
    for rule in config["policies"]:
        rule.update(verification)
    process = PacsdProcess.from_config(folder, config).start()
    yield process
    if process.process is not None and process.process.poll() is None:
        process.stop()


def closed_lines(server: PacsdProcess, calling: str, count: int) -> list[dict[str, Any]]:
    """The "association closed" lines of `count` accepted associations from `calling`, in
    order. Found by their calling AE title, not by position: an earlier test's line may reach
    the captured output after this test started."""
    deadline = time.monotonic() + 15
    while True:
        lines = [
            line
            for line in server.accepted_associations(0)
            if line.get("calling_ae_title") == calling
        ]
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"no {count} closed associations from {calling}"
        time.sleep(0.05)


def new_lines(server: PacsdProcess, event: str, before: int, count: int) -> list[dict[str, Any]]:
    """The `count` lines named `event` logged after the first `before` ones (bounded wait)."""
    return server.wait_for(event, before + count)[before : before + count]


def test_hash_password_cli_prints_a_hash_that_verifies() -> None:
    """`pacsd hash-password` prints an argon2id PHC hash of its input, salted, nothing else."""
    first, second = hash_password_cli("s3cret"), hash_password_cli("s3cret")
    assert first.returncode == 0, first.stderr
    printed = first.stdout.strip()
    assert printed.startswith("$argon2id$")
    assert "s3cret" not in first.stdout
    assert password_matches(printed, b"s3cret")
    assert not password_matches(printed, b"s3cret!")
    assert printed != second.stdout.strip()  # a new salt each time
    assert hash_password_cli("").returncode == 1


def test_identities_accepted_and_positive_response_received(
    server: PacsdProcess, idp_key: rsa.RSAPrivateKey
) -> None:
    """Username only, username+password (positive response) and a JWT are verified."""
    valid = jwt.encode(
        {"sub": "ris", "exp": int(time.time()) + 300}, idp_key, algorithm="RS256"
    ).encode()
    answers: list[Any] = []
    verified_before = len(server.events("user identity verified"))
    for item in (
        identity(1, b"viewer"),
        identity(2, b"ris", PASSWORD.encode(), response=True),
        identity(5, valid, response=True),
    ):
        with established(server, calling="VERIFIED", ext_neg=[item]) as assoc:
            answers.append(assoc.acceptor.user_identity)
    assert answers[0] is None  # no positive response asked, none sent
    for answer in answers[1:]:  # PS3.7 D.3.3.7.2: zero-length server response
        assert answer is not None
        assert answer.server_response == b""
    accepted = closed_lines(server, "VERIFIED", 3)
    assert [line["rule"] for line in accepted] == ["others", "ris-only", "ris-only"]
    verified = new_lines(server, "user identity verified", verified_before, 3)
    assert [(line["username"], line["user_identity_type"]) for line in verified] == [
        ("viewer", 1),
        ("ris", 2),
        ("ris", 5),
    ]


@pytest.mark.parametrize(
    ("item", "cause"),
    [
        (identity(2, b"ris", b"wrong-password"), "wrong password"),
        (identity(2, b"mallory", PASSWORD.encode()), "unknown user"),
        (identity(1, b"ris"), "user must send a password"),  # a name is not enough for ris
    ],
    ids=["wrong-password", "unknown-user", "name-without-password"],
)
def test_failed_identity_rejects_with_the_standard_codes(
    server: PacsdProcess, item: Any, cause: str
) -> None:
    """A sent identity that fails rejects (1, 2, 1), also under an optional rule; the log says
    why in words and never contains the password."""
    assert rejection_of(request(server, ext_neg=[item])) == REJECTED_FOR_IDENTITY
    deadline = time.monotonic() + 10
    while not any(
        cause in str(line.get("reason")) for line in server.events("association rejected")
    ):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    line = next(
        line for line in server.events("association rejected") if cause in str(line["reason"])
    )
    assert line["level"] == "warning"
    assert line["rejection"] == "result=1 source=2 reason=1"
    assert PASSWORD not in server.output()
    assert "wrong-password" not in server.output()


def test_expired_token_rejected(server: PacsdProcess, idp_key: rsa.RSAPrivateKey) -> None:
    """A JWT past its exp (beyond the leeway) rejects the association."""
    expired = jwt.encode({"sub": "ris", "exp": int(time.time()) - 600}, idp_key, algorithm="RS256")
    assoc = request(server, ext_neg=[identity(5, expired.encode())])
    assert rejection_of(assoc) == REJECTED_FOR_IDENTITY
    server.wait_for("association rejected")
    assert expired not in server.output()


def test_required_rule_rejects_without_identity(server: PacsdProcess) -> None:
    """A rule with user_identity: required rejects a peer that sends none, accepts a verified."""
    assert rejection_of(request(server, calling="SECURE1")) == REJECTED_FOR_IDENTITY
    kerberos = identity(3, b"a-kerberos-ticket")  # pacsd cannot verify it: not enough
    assert rejection_of(request(server, calling="SECURE1", ext_neg=[kerberos])) == (1, 2, 1)
    with established(server, calling="SECURE1", ext_neg=[identity(1, b"viewer")]):
        pass


def test_not_accepted_rule_ignores_the_identity(server: PacsdProcess) -> None:
    """Under user_identity: not-accepted even a wrong password is ignored: no response sent."""
    wrong = identity(2, b"ris", b"wrong-password", response=True)
    with established(server, calling="IGNORE1", ext_neg=[wrong]) as assoc:
        assert assoc.acceptor.user_identity is None


def test_username_rule_needs_a_verified_name(server: PacsdProcess) -> None:
    """An identity pacsd cannot verify never reaches a `match.username` rule."""
    kerberos = identity(3, b"ris")
    with established(server, calling="KERBEROS", ext_neg=[kerberos]):
        pass
    assert [line["rule"] for line in closed_lines(server, "KERBEROS", 1)] == ["others"]


def test_without_users_a_username_is_not_trusted(pacsd_server: ServerFactory) -> None:
    """With no users configured a sent username is unverifiable: it matches no username rule."""
    policies = [
        {"name": "by-user", "match": {"username": "alice"}, "sop_classes": ["verification"]},
        {"name": "others", "sop_classes": ["verification"]},
    ]
    server = pacsd_server(policies=policies)
    with established(server, ext_neg=[identity(1, b"alice")]):
        pass
    assert server.accepted_associations(2)[1]["rule"] == "others"


def test_sighup_reloads_the_users(pacsd_server: ServerFactory) -> None:
    """identity is reloadable: a user added to the file is accepted after SIGHUP."""
    policies = [{"name": "all", "sop_classes": ["verification"], "user_identity": "required"}]
    server = pacsd_server(policies=policies, ready_by_echo=False)
    viewer = identity(1, b"viewer")
    assert rejection_of(request(server, ext_neg=[viewer])) == REJECTED_FOR_IDENTITY
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    config["identity"] = {"users": [{"username": "viewer"}]}
    server.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    server.send_signal(signal.SIGHUP)
    server.wait_for("configuration reloaded")
    with established(server, ext_neg=[viewer]):
        pass


def test_wrong_password_under_a_username_rule_is_an_identity_rejection(
    pacsd_server: ServerFactory,
) -> None:
    """Both rule shapes answer a failed identity (1, 2, 1), even when the rules after them
    would reject the calling AE title (1, 1, 3), as config/examples/secure.yaml's do: a rule
    that matches on `username`, and one that does not but requires an identity."""
    verification = ["verification"]
    server = pacsd_server(
        identity={"users": [{"username": "ris", "password_hash": hash_password(PASSWORD)}]},
        policies=[
            {"name": "ris", "match": {"username": "ris"}, "sop_classes": verification},
            {
                "name": "secure",
                "match": {"calling_ae": "SECURE*"},
                "user_identity": "required",
                "sop_classes": verification,
            },
            {
                "name": "everyone-else",
                "action": "reject",
                "reject_reason": "calling-ae-not-recognised",
            },
        ],
        ready_by_echo=False,
    )
    wrong = identity(2, b"ris", b"wrong-password")
    right = identity(2, b"ris", PASSWORD.encode())
    assert rejection_of(request(server, ext_neg=[wrong])) == REJECTED_FOR_IDENTITY
    assert rejection_of(request(server, calling="SECURE1", ext_neg=[wrong])) == (1, 2, 1)
    assert rejection_of(request(server, calling="SECURE1")) == REJECTED_FOR_IDENTITY
    assert rejection_of(request(server)) == (1, 1, 3)  # no identity: not the ris rule's
    with established(server, ext_neg=[right]):
        pass
    with established(server, calling="SECURE1", ext_neg=[right]):
        pass
    rejected = server.wait_for("association rejected", 4)
    assert [line["rule"] for line in rejected] == ["ris", "ris", "secure", "everyone-else"]
    assert rejected[0]["reason"] == "user identity not verified: wrong password"
    accepted = server.accepted_associations(2)
    assert [line["rule"] for line in accepted] == ["ris", "ris"]
