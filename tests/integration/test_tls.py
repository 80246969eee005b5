"""DICOM TLS (PS3.15 B.1/B.9): the TLS listener, client certificates and the policy, key
passwords, start-up errors, silent clients, and outgoing TLS associations (C-MOVE)."""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests import datagen
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess, base_config, echo, pacsd_command
from tests.inspect_archive import index_rows
from tests.integration.test_connection_limits import back_to_baseline, settled_resources
from tests.integration.test_handles import wait_for_associations
from tests.scu import chunked_send, store_files
from tests.tls_certs import (
    KEY_PASSWORD,
    SERVER_NAME,
    Pki,
    client_context,
    make_pki,
    tls_echo,
    wait_for_tls_echo,
)

DIMSE_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, pacsd's certificate and key (one set for the module's tests)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def shared_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsdProcess]:
    """One pacsd with the default TLS listener next to the plain one, for the tests that do
    not change it."""
    folder = tmp_path_factory.mktemp("shared-tls")
    config = base_config(folder, network={"tls": pki.listener()})
    server = PacsdProcess.from_config(folder, config).start()
    yield server
    server.stop()


def tls_server(
    pacsd_server: ServerFactory, pki: Pki, tls: dict[str, Any] | None = None, **overrides: Any
) -> PacsdProcess:
    """A pacsd with the TLS listener next to the plain one."""
    network = {"tls": pki.listener(**(tls or {})), **overrides.pop("network", {})}
    return pacsd_server(network=network, **overrides)


def handshake_failures(server: PacsdProcess, count: int = 1) -> list[dict[str, Any]]:
    """The server's "TLS handshake failed" lines, once there are `count` of them."""
    return server.wait_for("TLS handshake failed; connection closed", count)


def test_echo_and_store_over_tls(shared_tls: PacsdProcess, pki: Pki, tmp_path: Path) -> None:
    """A pynetdicom SCU echoes and stores over TLS; the instance is in the archive."""
    server = shared_tls
    assert server.tls_port not in (0, server.port)
    dataset = datagen.ct_image(datagen.StudyContext(), size=32)
    path = datagen.write_part10(dataset, tmp_path / "ct.dcm")
    ae = AE(ae_title="TLSSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    context = client_context(pki)
    assoc = ae.associate(
        "127.0.0.1", server.tls_port, ae_title="PACSD", tls_args=(context, SERVER_NAME)
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        with chunked_send():
            assert assoc.send_c_store(path).Status == 0x0000
        tls_socket = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert isinstance(tls_socket, ssl.SSLSocket)
        assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        assoc.release()
    rows = index_rows(f"sqlite:///{server.config_path.parent / 'index.sqlite'}")
    assert str(dataset.SOPInstanceUID) in {row["sop_instance_uid"] for row in rows}
    assert echo(server.host, server.port), "the plain listener serves next to the TLS one"


def test_plain_tcp_to_the_tls_port_gets_no_association(shared_tls: PacsdProcess, pki: Pki) -> None:
    """A plain-TCP A-ASSOCIATE-RQ on the TLS port fails the handshake; the port stays TLS."""
    server = shared_tls
    before = len(server.events("TLS handshake failed; connection closed"))
    assert not echo(server.host, server.tls_port)
    assert handshake_failures(server, before + 1)[-1]["peer_address"] == "127.0.0.1"
    assert tls_echo(server.tls_port, client_context(pki)) == ("accepted", 0x0000)


def test_tls_below_1_2_is_refused_and_1_3_can_be_required(
    shared_tls: PacsdProcess, pacsd_server: ServerFactory, pki: Pki
) -> None:
    """TLS 1.1 is refused (BCP 195); 1.2 works by default; min_version 1.3 refuses 1.2."""
    server = shared_tls
    before = len(server.events("TLS handshake failed; connection closed"))
    old = client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
    assert tls_echo(server.tls_port, old) == ("accepted", 0x0000)
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        tls_1_1_only(pki).wrap_socket(raw, server_hostname=SERVER_NAME)
    assert "UNSUPPORTED_PROTOCOL" in handshake_failures(server, before + 1)[-1]["reason"]

    strict = tls_server(pacsd_server, pki, {"min_version": "1.3"})
    assert tls_echo(strict.tls_port, old)[0] == "failed"
    assert tls_echo(strict.tls_port, client_context(pki)) == ("accepted", 0x0000)


def tls_1_1_only(pki: Pki) -> ssl.SSLContext:
    """A client context that offers TLS 1.1 and nothing newer."""
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy.load_verify_locations(str(pki.ca_file))
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at level 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        legacy.minimum_version = ssl.TLSVersion.TLSv1_1
        legacy.maximum_version = ssl.TLSVersion.TLSv1_1
    return legacy


SUBJECT_RULES = [
    {
        "name": "ct1-by-certificate",
        "match": {"tls_subject": "CN=ct1,*"},
        "action": "accept",
        "sop_classes": ["verification"],
    },
    {
        "name": "no-mr1",
        "match": {"tls_subject": "CN=mr1,*"},
        "action": "reject",
        "reject_reason": "calling-ae-not-recognised",
    },
]


def test_required_client_certificate_and_policy_on_its_subject(
    pacsd_server: ServerFactory, pki: Pki
) -> None:
    """Required client certificates: none or one from another CA fails the handshake; a good
    one gets in, and policy rules decide on its subject (accept CN=ct1, A-ASSOCIATE-RJ mr1)."""
    server = tls_server(
        pacsd_server,
        pki,
        {"client_certificates": "required"},
        policies=SUBJECT_RULES,
        ready_by_echo=False,
    )
    ct1, mr1 = pki.client("ct1"), pki.client("mr1")
    wait_for_tls_echo(server.tls_port, client_context(pki, ct1))
    assert tls_echo(server.tls_port, client_context(pki))[0] == "failed"
    foreign = pki.foreign_client("ct1")
    assert tls_echo(server.tls_port, client_context(pki, foreign))[0] == "failed"
    reasons = [line["reason"] for line in handshake_failures(server, 2)]
    assert "CERTIFICATE" in reasons[0].upper()  # PEER_DID_NOT_RETURN_A_CERTIFICATE
    assert "CERTIFICATE_VERIFY_FAILED" in reasons[1].upper()

    assert tls_echo(server.tls_port, client_context(pki, ct1)) == ("accepted", 0x0000)
    assert tls_echo(server.tls_port, client_context(pki, mr1)) == ("rejected", None)
    accepted = server.accepted_associations()
    assert accepted[-1]["rule"] == "ct1-by-certificate"
    rejected = server.wait_for("association rejected")
    assert rejected[-1]["rule"] == "no-mr1"
    assert ct1.subject.startswith("CN=ct1,OU=Radiology,O=Hospital")


def test_optional_client_certificate(pacsd_server: ServerFactory, pki: Pki) -> None:
    """Optional client certificates: a peer without one gets in (falls to the next rule), one
    with a good certificate is matched on its subject, a bad certificate is refused."""
    rules = [
        SUBJECT_RULES[0],
        {"name": "anyone", "action": "accept", "sop_classes": ["verification"]},
    ]
    server = tls_server(pacsd_server, pki, {"client_certificates": "optional"}, policies=rules)
    assert tls_echo(server.tls_port, client_context(pki)) == ("accepted", 0x0000)
    ct1 = client_context(pki, pki.client("ct1"))
    assert tls_echo(server.tls_port, ct1) == ("accepted", 0x0000)
    foreign = client_context(pki, pki.foreign_client("ct1"))
    assert tls_echo(server.tls_port, foreign)[0] == "failed"
    # The first accepted association is the harness's plain C-ECHO (readiness).
    rules_used = [line["rule"] for line in server.accepted_associations(3)]
    assert rules_used[1:] == ["anyone", "ct1-by-certificate"]


@pytest.mark.parametrize("source", ["file", "env"])
def test_encrypted_key_with_password_from_file_or_environment(
    pki: Pki, tmp_path: Path, source: str
) -> None:
    """An encrypted key is opened with the password from key_password_file or the variable
    named by key_password_env; the password never appears in the output."""
    tls = pki.listener(key_file=str(pki.encrypted_server_key()))
    env: dict[str, str] = {}
    if source == "file":
        secret = tmp_path / "key-password"
        secret.write_text(KEY_PASSWORD + "\n", encoding="utf-8")
        tls["key_password_file"] = str(secret)
    else:
        tls["key_password_env"] = "PACSD_TEST_KEY_PASSWORD"  # noqa: S105 - a variable's name
        env["PACSD_TEST_KEY_PASSWORD"] = KEY_PASSWORD
    folder = tmp_path / "server"
    config = base_config(folder, network={"tls": tls})
    server = PacsdProcess.from_config(folder, config, **env).start()
    try:
        wait_for_tls_echo(server.tls_port, client_context(pki), timeout=10)
    finally:
        server.stop()
    assert KEY_PASSWORD not in server.output()


def start_up_error(folder: Path, tls: dict[str, Any], command: tuple[str, ...]) -> str:
    """Run `pacsd serve --config` or `pacsd config check` with this TLS section; it must stop
    with exit 2 and one message."""
    config = base_config(folder, network={"tls": tls})
    PacsdProcess.from_config(folder, config)
    result = pacsd_command(*command, str(folder / "pacsd.yaml"), cwd=folder)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pacsd: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("serve", "--config"), ("config", "check")])
def test_bad_tls_files_stop_start_up_with_one_message_naming_the_key(
    pki: Pki, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A wrong key password, a missing password variable, a certificate that is not one, a key
    that is not the certificate's, and an unreadable CA file each stop start-up (exit 2);
    `pacsd config check` finds the same."""
    encrypted = str(pki.encrypted_server_key())
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    other_key = pki.client("other").key
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"key_file": encrypted, "key_password_file": str(wrong)},
            "network.tls.key_password_file: wrong password",
        ),
        (
            {"key_file": encrypted, "key_password_env": "PACSD_TEST_NO_SUCH_VARIABLE"},
            "network.tls.key_password_env: the environment variable",
        ),
        ({"key_file": encrypted}, "network.tls.key_file: "),
        ({"certificate_file": str(pki.server.key)}, "network.tls.certificate_file: cannot load"),
        ({"key_file": str(other_key)}, "network.tls.key_file: "),
        ({"ca_file": str(tmp_path / "missing.pem")}, "network.tls.ca_file: cannot load"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:  # each case is a process start
        lines = pool.map(
            lambda number: start_up_error(
                tmp_path / f"case{number}", pki.listener(**cases[number][0]), command
            ),
            range(len(cases)),
        )
    for line, (_overrides, expected) in zip(lines, cases, strict=True):
        assert expected in line, line
        assert "not-the-password" not in line


def test_silent_tls_clients_do_not_stall_others(pacsd_server: ServerFactory, pki: Pki) -> None:
    """Four clients that connect to the TLS port and say nothing do not hold up a real TLS
    client; after handshake_timeout the server closes them, logging each, leaking nothing."""
    server = tls_server(pacsd_server, pki, {"handshake_timeout": 2})
    baseline = settled_resources(server)
    silent = [socket.create_connection(("127.0.0.1", server.tls_port)) for _ in range(4)]
    try:
        started = time.monotonic()
        assert tls_echo(server.tls_port, client_context(pki)) == ("accepted", 0x0000)
        assert time.monotonic() - started < 1.5
        for sock in silent:
            sock.settimeout(8)
            assert sock.recv(1) == b"", "the server closes a silent connection"
        assert time.monotonic() - started < 8
    finally:
        for sock in silent:
            sock.close()
    failures = handshake_failures(server, 4)
    assert {line["reason"] for line in failures} == {"no handshake within 2 s"}
    back_to_baseline(server, baseline)


def test_c_move_to_a_tls_destination(pacsd_server: ServerFactory, pki: Pki, tmp_path: Path) -> None:
    """A C-MOVE to a peer marked `tls: true` goes over TLS: the destination (a second pacsd
    that requires client certificates) verifies pacsd's certificate and stores the instance."""
    destination = tls_server(
        pacsd_server, pki, {"client_certificates": "required"}, ae_title="DEST"
    )
    peer = {
        "ae_title": "DEST",
        "host": "127.0.0.1",
        "port": destination.tls_port,
        "tls": True,
        "tls_server_name": SERVER_NAME,
    }
    # pacsd presents its certificate as client certificate; its TLS listener stays off.
    source = pacsd_server(network={"tls": pki.listener(enabled=False)}, peers=[peer])
    dataset = datagen.ct_image(datagen.StudyContext(), size=32)
    path = datagen.write_part10(dataset, tmp_path / "ct.dcm")
    assert store_files(source.host, source.port, [path]) == [(0x0000, "")]

    assert c_move(source, "DEST", str(dataset.StudyInstanceUID))[-1] == 0x0000
    # The sub-association is released as the final response leaves (engine/core.py
    # release_later): its "association closed" line may come a moment later.
    deadline = time.monotonic() + 15
    while not any(
        line["calling_ae_title"] == "PACSD" for line in destination.accepted_associations()
    ):
        assert time.monotonic() < deadline, "the sub-association never closed"
        time.sleep(0.05)
    rows = index_rows(f"sqlite:///{destination.config_path.parent / 'index.sqlite'}")
    assert [row["sop_instance_uid"] for row in rows] == [str(dataset.SOPInstanceUID)]


def c_move(server: PacsdProcess, destination: str, study_instance_uid: str) -> list[int]:
    """A study-level C-MOVE to `destination`: the statuses received."""
    ae = AE(ae_title="MOVESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    try:
        model = StudyRootQueryRetrieveInformationModelMove
        return [
            int(status.Status)
            for status, _ in assoc.send_c_move(query, destination, model)
            if "Status" in status
        ]
    finally:
        assoc.release()


def test_workers_share_the_tls_port(pacsd_server: ServerFactory, pki: Pki) -> None:
    """With network.workers 2, both workers accept on the one TLS port (SO_REUSEPORT)."""
    server = tls_server(pacsd_server, pki, network={"workers": 2}, ready_by_echo=False)
    listening = server.wait_for("listening", count=2)
    assert {line["tls_port"] for line in listening} == {server.tls_port}
    context = client_context(pki)
    wait_for_tls_echo(server.tls_port, context)
    for _ in range(16):  # all on one worker by chance: 2 in 2**16
        assert tls_echo(server.tls_port, context) == ("accepted", 0x0000)
    accepted_by = {line.get("worker") for line in server.accepted_associations(17)}
    assert accepted_by == {0, 1}, "the kernel spread the TLS connections over both workers"


def test_status_interface_shows_the_tls_version_and_subject(
    pacsd_server: ServerFactory, pki: Pki
) -> None:
    """`pacsd associations` (GET /associations) shows an open TLS association's protocol
    version and its client certificate's subject; plain associations show none."""
    server = tls_server(pacsd_server, pki, {"client_certificates": "required"})
    ct1 = pki.client("ct1")
    wait_for_tls_echo(server.tls_port, client_context(pki, ct1))
    ae = AE(ae_title="CT1")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(
        "127.0.0.1",
        server.tls_port,
        ae_title="PACSD",
        tls_args=(client_context(pki, ct1), SERVER_NAME),
    )
    assert assoc.is_established
    try:
        found = wait_for_associations(
            server, lambda found: any(a["calling_ae_title"] == "CT1" for a in found), "CT1 listed"
        )
        [listed] = [a for a in found if a["calling_ae_title"] == "CT1"]
    finally:
        assoc.release()
    assert listed["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert listed["tls_subject"] == ct1.subject
