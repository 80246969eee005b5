"""config/examples/secure.yaml, served by a real pacsd, does what its comments promise.

Certificates are generated for the test and put where the example expects them (tls/ under the
working directory, the key encrypted, its password in PACSD_TLS_KEY_PASSWORD). Only the bind
address, the TLS port and the data folders change; the rules are the shipped ones. The CT
scanner stores with DCMTK's storescu over TLS, the RIS logs in with its password (pynetdicom),
and a certificate the rules do not know is rejected.
"""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess, base_config, pacsd_command
from tests.inspect_archive import index_rows
from tests.interop.test_dcmtk import run
from tests.scu import rejection_of, settled
from tests.tls_certs import KEY_PASSWORD, SERVER_NAME, Pki, client_context, make_pki

pytestmark = pytest.mark.usefixtures("dcmtk")
SECURE = Path(__file__).resolve().parents[2] / "config" / "examples" / "secure.yaml"
EXAMPLE_PASSWORD = "change-me"  # noqa: S105 - the example's documented placeholder


def example_config(folder: Path) -> dict[str, Any]:
    """The shipped file with loopback, an ephemeral TLS port and the test's data folders."""
    config: dict[str, Any] = yaml.safe_load(SECURE.read_text(encoding="utf-8"))
    config["network"] = {**config["network"], "host": "127.0.0.1"}
    config["network"]["tls"] = {**config["network"]["tls"], "port": 0, "handshake_timeout": 5}
    confined = base_config(folder)
    for section in ("database", "storage", "http", "logging", "audit"):
        config[section] = confined[section]
    return config


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[PacsdProcess, Pki]]:
    """pacsd serving the example, its files where the example says."""
    folder = tmp_path / "pacsd"
    pki = make_pki(tmp_path / "pki")
    (folder / "tls").mkdir(parents=True)
    shutil.copy(pki.server.certificate, folder / "tls" / "pacsd.pem")
    shutil.copy(pki.encrypted_server_key(), folder / "tls" / "pacsd-key.pem")
    shutil.copy(pki.ca_file, folder / "tls" / "hospital-ca.pem")
    server = PacsdProcess.from_config(
        folder, example_config(folder), PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD
    )
    checked = pacsd_command(
        "config", "check", str(server.config_path), cwd=folder, PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD
    )
    assert checked.returncode == 0, checked.stderr
    server.start(ready_by_echo=False)
    assert server.tls_port == server.port, "TLS only: no plain listener"
    yield server, pki
    if server.process is not None and server.process.poll() is None:
        server.stop()


def dcmtk(pki: Pki, tool: str, name: str, calling: str, port: int, *args: str) -> str:
    """A DCMTK tool over TLS with the client certificate CN=`name`; its output, or raises."""
    client = pki.client(name)
    command = [tool, "-v", "+tls", str(client.key), str(client.certificate), "+cf"]
    command += [str(pki.ca_file), "-aet", calling, "-aec", "PACSD", "127.0.0.1", str(port)]
    result = run([*command, *args])
    if result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result.stdout + result.stderr


def ris_association(pki: Pki, port: int, password: str) -> Any:
    """The RIS over TLS (its own certificate) with user name and password."""
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"ris"
    identity.secondary_field = password.encode()
    ae = AE(ae_title="RIS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    context: ssl.SSLContext = client_context(pki, pki.client("ris.example.org"))
    return settled(
        ae.associate(
            "127.0.0.1", port, ae_title="PACSD", ext_neg=[identity], tls_args=(context, SERVER_NAME)
        )
    )


def test_secure_example(secure: tuple[PacsdProcess, Pki], tmp_path: Path) -> None:
    """CT1 with its certificate stores over TLS; the RIS gets in with its password and not
    without it; an unknown certificate is rejected; the audit trail records all of it."""
    server, pki = secure
    files = list(datagen.ct_series(tmp_path / "ct", 2, size=32))
    output = dcmtk(pki, "storescu", "ct1.example.org", "CT1", server.port, *map(str, files))
    assert "Association Accepted" in output
    assert len(index_rows(f"sqlite:///{server.config_path.parent / 'index.sqlite'}")) == 2

    assoc = ris_association(pki, server.port, EXAMPLE_PASSWORD)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()
    refused = ris_association(pki, server.port, "not-the-password")
    assert rejection_of(refused) == (1, 2, 1)  # the ris rule: its identity failed (PS3.7 D.3.3.7)
    [unverified] = server.wait_for("user identity not verified")
    assert unverified["reason"] == "wrong password"

    with pytest.raises(AssertionError) as stranger:
        dcmtk(pki, "echoscu", "mr1.example.org", "MR1", server.port)
    assert "Association Rejected" in str(stranger.value)

    rules = [line["rule"] for line in server.accepted_associations(2)]
    assert rules == ["ct-scanner", "ris"]
    server.wait_for("association rejected", 2)
    audit = [json.loads(line) for line in (server.config_path.parent / "audit.jsonl").open()]
    codes = [event["EventIdentification"]["EventID"]["csd-code"] for event in audit]
    assert codes.count("110104") >= 1, "the stored study"
    assert codes.count("110113") >= 2, "the two rejections"
