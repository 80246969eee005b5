"""DICOM TLS with DCMTK: echoscu and storescu as TLS clients of pacsd (client certificates
required), and DCMTK storescp as a TLS C-MOVE destination that requires pacsd's certificate.

DCMTK 3.6.7 options used: +tls KEY CERT (its own key and certificate), +cf FILE (a trusted CA),
-rc/--require-peer-cert (the default: the peer's certificate must verify), +py (the default
"non-downgrading BCP 195" profile: TLS 1.2 or later).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from tests import datagen
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess
from tests.inspect_archive import index_rows
from tests.scu import store_files
from tests.tls_certs import Pki, client_context, make_pki, tls_echo

pytestmark = pytest.mark.usefixtures("dcmtk")
TOOL_TIMEOUT_S = 60
# DCMTK leaves Nagle on unless told; it costs ~40 ms per exchange (docs/dicom-notes.md,
# "Sockets and measurement").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DCMTK_RULES = [
    {
        "name": "dcmtk-by-certificate",
        "match": {"tls_subject": "CN=dcmtk,*"},
        "action": "accept",
        "sop_classes": ["verification", "storage"],
    },
]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, pacsd's certificate and key, in the test's folder."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_only(pacsd_server: ServerFactory, pki: Pki) -> PacsdProcess:
    """pacsd on DICOM TLS only, client certificates required, one rule on their subject."""
    tls = pki.listener(client_certificates="required")
    server = pacsd_server(
        network={"listen_plain": False, "tls": tls}, policies=DCMTK_RULES, ready_by_echo=False
    )
    assert server.tls_port == server.port, "without the plain listener, port is the TLS one"
    return server


def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion, bounded in time."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=DCMTK_ENV, check=False
    )


def tls_client(pki: Pki, tool: str, server: PacsdProcess, *args: str) -> list[str]:
    """A DCMTK client command line over TLS with the client certificate CN=dcmtk."""
    client = pki.client("dcmtk")
    return [
        tool,
        "+tls",
        str(client.key),
        str(client.certificate),
        "+cf",
        str(pki.ca_file),
        "-aet",
        "DCMTKSCU",
        "-aec",
        "PACSD",
        *args,
        "127.0.0.1",
        str(server.tls_port),
    ]


def test_echoscu_over_tls(tls_only: PacsdProcess, pki: Pki) -> None:
    """echoscu --enable-tls with a client certificate gets a successful C-ECHO; the policy
    matched its subject; without a certificate (anonymous TLS) the handshake is refused."""
    result = run(tls_client(pki, "echoscu", tls_only, "-v"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr
    accepted = tls_only.accepted_associations()
    assert accepted[-1]["rule"] == "dcmtk-by-certificate"
    anonymous = ["echoscu", "+tla", "+cf", str(pki.ca_file), "127.0.0.1", str(tls_only.tls_port)]
    assert run(anonymous).returncode != 0
    tls_only.wait_for("TLS handshake failed; connection closed")


def test_storescu_over_tls_stores_into_the_archive(
    tls_only: PacsdProcess, pki: Pki, tmp_path: Path
) -> None:
    """storescu --enable-tls stores three files; all three are indexed."""
    files = list(datagen.ct_series(tmp_path / "in", 3, size=32))
    result = run([*tls_client(pki, "storescu", tls_only), *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = index_rows(f"sqlite:///{tls_only.config_path.parent / 'index.sqlite'}")
    expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}
    assert {row["sop_instance_uid"] for row in rows} == expected


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls_storescp(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on TLS, requiring a client certificate from the test CA."""
    port, folder = _free_loopback_port(), tmp_path / "received"
    folder.mkdir()
    own = pki.client("storescp")
    command = ["storescp", "+tls", str(own.key), str(own.certificate), "+cf", str(pki.ca_file)]
    command += ["-rc", "-aet", "DCMTKSCP", "-od", str(folder), str(port)]
    process = subprocess.Popen(command, env=DCMTK_ENV, stderr=subprocess.DEVNULL)
    try:
        ready = client_context(pki, pki.client("probe"))
        ready.check_hostname = False  # storescp's certificate names storescp.example.org
        deadline = time.monotonic() + 20
        while tls_echo(port, ready, timeout=2) != ("accepted", 0x0000):
            assert time.monotonic() < deadline, "storescp did not answer"
            assert process.poll() is None, "storescp ended"
            time.sleep(0.1)
        yield port, folder
    finally:
        process.terminate()
        process.wait(10)


def test_c_move_to_dcmtk_storescp_over_tls(
    pacsd_server: ServerFactory, pki: Pki, tls_storescp: tuple[int, Path], tmp_path: Path
) -> None:
    """pacsd moves an instance to a DCMTK storescp marked `tls: true`, presenting its own
    certificate (storescp requires one) and verifying storescp's against the CA."""
    port, folder = tls_storescp
    peer = {
        "ae_title": "DCMTKSCP",
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "tls_server_name": "storescp.example.org",
    }
    server = pacsd_server(network={"tls": pki.listener(enabled=False)}, peers=[peer])
    dataset = datagen.ct_image(datagen.StudyContext(), size=32)
    path = datagen.write_part10(dataset, tmp_path / "ct.dcm")
    assert store_files(server.host, server.port, [path]) == [(0x0000, "")]

    ae = AE(ae_title="MOVESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = dataset.StudyInstanceUID
    try:
        model = StudyRootQueryRetrieveInformationModelMove
        responses = list(assoc.send_c_move(query, "DCMTKSCP", model))
    finally:
        assoc.release()
    assert int(responses[-1][0].Status) == 0x0000
    received = [dcmread(p) for p in folder.iterdir() if p.is_file()]
    assert [str(ds.SOPInstanceUID) for ds in received] == [str(dataset.SOPInstanceUID)]
