"""The `pacsd` command line: exit codes 0 ok, 2 configuration error, 1 anything else."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from pacsd import __version__
from pacsd.index.schema import HEAD_REVISION
from tests.harness import pacsd_command

pacsd = pacsd_command


def test_version() -> None:
    """--version prints the package version."""
    result = pacsd("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    """A valid file: exit 0 and a one-line summary."""
    path = tmp_path / "ok.yaml"
    path.write_text("ae_title: ARCHIVE\nnetwork: {port: 4104}\n")
    result = pacsd("config", "check", str(path))
    assert result.returncode == 0
    assert "ok (AE ARCHIVE, port 4104)" in result.stdout


def test_config_check_reports_errors_with_exit_2(tmp_path: Path) -> None:
    """An invalid file: exit 2, one stderr line per problem naming file and key."""
    path = tmp_path / "bad.yaml"
    path.write_text("network:\n  port: 99999\nstorage:\n  duplicates: yes\n")
    result = pacsd("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"pacsd: {path}: network.port: Input should be less than or equal to 65535 (got 99999)",
        f"pacsd: {path}: storage.duplicates: unknown key",
    ]


def test_serve_with_a_bad_configuration_exits_2_before_binding(tmp_path: Path) -> None:
    """`pacsd serve` stops start-up on a configuration mistake (exit 2)."""
    path = tmp_path / "bad.yaml"
    path.write_text("network:\n  hots: 0.0.0.0\n")
    result = pacsd("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "network.hots: unknown key" in result.stderr
    assert not (tmp_path / "var").exists(), "nothing was created"


def test_config_show_masks_the_database_password(tmp_path: Path) -> None:
    """The effective configuration is printed as YAML with the password replaced."""
    result = pacsd(
        "config",
        "show",
        PACSD_DATABASE__URL="postgresql+psycopg://pacsd:s3cret@db.example:5432/pacsd",
    )
    assert result.returncode == 0
    assert "s3cret" not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["database"]["url"] == "postgresql+psycopg://pacsd:***@db.example:5432/pacsd"
    assert shown["ae_title"] == "PACSD"
    assert shown["policies"][0]["name"] == "accept-all"


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    """`pacsd db upgrade` migrates an empty SQLite database to the newest revision."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    result = pacsd("db", "upgrade", PACSD_DATABASE__URL=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database schema at revision {HEAD_REVISION}"
    assert (tmp_path / "index.sqlite").stat().st_size > 0


def test_echo_without_a_server_exits_1() -> None:
    """`pacsd echo` against a closed port fails with exit 1 and says why."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = pacsd("echo", "--host", "127.0.0.1", "--port", str(port), "--timeout", "3")
    assert result.returncode == 1
    assert "no association" in result.stderr


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    """serve and db upgrade against a database nobody answers: exit 1, no traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/absent"
    for command in (("serve",), ("db", "upgrade")):
        result = pacsd(*command, cwd=tmp_path, PACSD_DATABASE__URL=url, PACSD_NETWORK__PORT="0")
        assert result.returncode == 1, command
        assert "index database unreachable: connection failed" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
