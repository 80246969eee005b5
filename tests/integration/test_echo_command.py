"""`pacsd echo` as health checks use it (Dockerfile HEALTHCHECK, the systemd unit's check):
over DICOM TLS when the configuration has no plain listener, and to any peer (issue 19)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.tls_certs import KEY_PASSWORD, SERVER_NAME, Pki, make_pki

pacsd = pacsd_command


@pytest.fixture
def tls_only(tmp_path: Path) -> Iterator[tuple[PacsdProcess, Pki]]:
    """A TLS-only pacsd that requires client certificates, its key encrypted (the shipped
    secure example's shape)."""
    pki = make_pki(tmp_path / "pki")
    tls = pki.listener(
        key_file=str(pki.encrypted_server_key()),
        key_password_env="PACSD_TLS_KEY_PASSWORD",  # noqa: S106 - a variable's name
        client_certificates="required",
    )
    folder = tmp_path / "pacsd"
    config = base_config(folder, network={"listen_plain": False, "tls": tls})
    server = PacsdProcess.from_config(folder, config, PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD)
    server.start(ready_by_echo=False)
    yield server, pki
    if server.process is not None and server.process.poll() is None:
        server.stop()


def test_health_check_of_a_tls_only_server_goes_over_tls(
    tls_only: tuple[PacsdProcess, Pki],
) -> None:
    """`pacsd echo` with the server's own configuration: TLS to the TLS port with pacsd's
    certificate as client certificate, as the container's health check runs it."""
    server, _pki = tls_only
    config = str(server.config_path)
    port = str(server.tls_port)  # the file says 0: chosen at start-up
    result = pacsd("echo", "--config", config, "--port", port, PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD)
    assert result.returncode == 0, result.stderr
    assert f"C-ECHO PACSD@127.0.0.1:{port} over TLS: success (0x0000)" in result.stdout
    plain = pacsd(
        "echo", "--config", config, "--port", port, "--no-tls", "--timeout", "3",
        PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD,
    )  # fmt: skip
    assert plain.returncode == 1
    assert "C-ECHO PACSD@127.0.0.1:" in plain.stderr


def test_health_check_reads_the_tls_port_from_the_configuration(
    tls_only: tuple[PacsdProcess, Pki], tmp_path: Path
) -> None:
    """With no option at all (the Dockerfile's HEALTHCHECK), the port comes from the file."""
    server, _pki = tls_only
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    config["network"]["tls"]["port"] = server.tls_port
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = pacsd("echo", "--config", str(fixed), PACSD_TLS_KEY_PASSWORD=KEY_PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "over TLS: success" in result.stdout


def test_echo_any_peer_with_given_certificates(tls_only: tuple[PacsdProcess, Pki]) -> None:
    """No configuration, a peer named by host, port and AE title over TLS with a client
    certificate, CA and server name given as options; a name the certificate does not carry
    fails; a peer from `peers` is reached by its AE title."""
    server, pki = tls_only
    client = pki.client("monitor.example.org")
    files = ["--cert", str(client.certificate), "--key", str(client.key), "--ca", str(pki.ca_file)]
    target = ["--host", "127.0.0.1", "--port", str(server.tls_port), "--called-aet", "PACSD"]
    result = pacsd("echo", *target, "--tls", *files, "--tls-server-name", SERVER_NAME)
    assert result.returncode == 0, result.stderr
    assert "over TLS: success" in result.stdout
    wrong = pacsd("echo", *target, "--tls", *files, "--tls-server-name", "pacs.example.org")
    assert wrong.returncode == 1
    assert "no association" in wrong.stderr

    peers = [
        {
            "ae_title": "PACSD",
            "host": "127.0.0.1",
            "port": server.tls_port,
            "tls": True,
            "tls_server_name": SERVER_NAME,
        }
    ]
    tls = {
        "certificate_file": str(client.certificate),
        "key_file": str(client.key),
        "ca_file": str(pki.ca_file),
    }
    path = server.config_path.parent / "monitor.yaml"
    path.write_text(yaml.safe_dump({"peers": peers, "network": {"tls": tls}}), encoding="utf-8")
    by_peer = pacsd("echo", "--config", str(path), "--peer", "PACSD")
    assert by_peer.returncode == 0, by_peer.stderr
    assert f"C-ECHO PACSD@127.0.0.1:{server.tls_port} over TLS: success" in by_peer.stdout
    unknown = pacsd("echo", "--config", str(path), "--peer", "NOBODY")
    assert unknown.returncode == 2
    assert "NOBODY is not in the AE table" in unknown.stderr
