"""No secret of the configuration in any message, log line or `pacsd config show` (issue 19).

The secret-bearing settings (server/pacsd/settings_secrets.py): the password of
`database.url`, `identity.users[].password_hash`, and the values behind
`network.tls.key_password_env` / `key_password_file` and `identity.jwt.secret_env`. Each is
tried where an administrator would meet it: a refused value, an override from the
environment, `config check`, `config show`, `serve`, `db upgrade`, a reload and the log of a
running server.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
import yaml

from pacsd.policy.identity import hash_password
from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.tls_certs import KEY_PASSWORD, make_pki

PASSWORD = "Sup3r-S3cret-DB-pw"  # noqa: S105 - a test value that must never be printed
USER_PASSWORD = "ris-login-pw-42"  # noqa: S105
JWT_SECRET = "jwt-hmac-secret-0123456789abcdef"  # noqa: S105
pacsd = pacsd_command


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write(folder: Path, document: object) -> Path:
    """A configuration file with `document`."""
    path = folder / "pacsd.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "document",
    [
        {"database": {"url": f"postgres://pacsd:{PASSWORD}@db.example.org/pacsd"}},
        {"database": {"url": f"postgresql://pacsd:{PASSWORD}@db.example.org/pacsd"}},
        {"database": {"url": f"postgresql+psycopg://pacsd:{PASSWORD}@db:port/pacsd"}},
        {"database": f"postgresql+psycopg://pacsd:{PASSWORD}@db.example.org/pacsd"},
        {"database": {"url": f"mysql://pacsd:{PASSWORD}@db.example.org/pacsd", "pool": 1}},
    ],
    ids=["postgres-scheme", "no-driver", "bad-port", "url-as-section", "two-errors"],
)
def test_a_refused_database_url_never_shows_its_password(
    tmp_path: Path, document: dict[str, object]
) -> None:
    """`config check` and `serve` refuse the URL naming the key, with the password masked."""
    path = write(tmp_path, document)
    for command in (("config", "check", str(path)), ("serve", "--config", str(path))):
        result = pacsd(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "database" in result.stderr
        assert PASSWORD not in result.stderr + result.stdout, command
        assert "Traceback" not in result.stderr


def test_a_refused_database_url_from_the_environment_never_shows_its_password(
    tmp_path: Path,
) -> None:
    """The same URL as a PACSD_DATABASE__URL override: the variable is named, not its value."""
    url = f"postgres://pacsd:{PASSWORD}@db.example.org/pacsd"
    result = pacsd("config", "show", cwd=tmp_path, PACSD_DATABASE__URL=url)
    assert result.returncode == 2
    assert "environment PACSD_DATABASE__URL: database.url: pacsd supports" in result.stderr
    assert "postgres://pacsd:***@db.example.org/pacsd" in result.stderr
    assert PASSWORD not in result.stderr


def test_an_unreachable_database_never_shows_its_password(tmp_path: Path) -> None:
    """serve, db upgrade and an admin command against a PostgreSQL nobody answers: the error
    and the database line of the command mask the password."""
    url = f"postgresql+psycopg://pacsd:{PASSWORD}@127.0.0.1:{closed_port()}/absent"
    for command in (("serve",), ("db", "upgrade"), ("worklist", "list")):
        result = pacsd(*command, cwd=tmp_path, PACSD_DATABASE__URL=url, PACSD_NETWORK__PORT="0")
        assert result.returncode == 1, command
        assert "index database unreachable" in result.stderr
        assert PASSWORD not in result.stderr + result.stdout, command
    assert "database postgresql+psycopg://pacsd:***@127.0.0.1:" in result.stderr


def test_password_hashes_are_masked_and_never_echoed(tmp_path: Path) -> None:
    """`config show` masks every password_hash; a plain password put in password_hash by
    mistake is refused without being repeated."""
    made = hash_password(USER_PASSWORD)
    path = write(tmp_path, {"identity": {"users": [{"username": "ris", "password_hash": made}]}})
    shown = pacsd("config", "show", "--config", str(path))
    assert shown.returncode == 0, shown.stderr
    assert made not in shown.stdout
    assert yaml.safe_load(shown.stdout)["identity"]["users"] == [
        {"username": "ris", "password_hash": "***"}
    ]
    path = write(
        tmp_path, {"identity": {"users": [{"username": "ris", "password_hash": USER_PASSWORD}]}}
    )
    refused = pacsd("config", "check", str(path))
    assert refused.returncode == 2
    assert "identity.users.0.password_hash: password_hash must be" in refused.stderr
    assert USER_PASSWORD not in refused.stderr
    entry = f"ris:{USER_PASSWORD}"  # a user written as one string: refused, not echoed
    path = write(tmp_path, {"identity": {"users": [entry]}})
    refused = pacsd("config", "check", str(path))
    assert refused.returncode == 2
    assert "identity.users.0" in refused.stderr
    assert USER_PASSWORD not in refused.stderr


def test_a_malformed_environment_override_is_one_line_without_its_value(tmp_path: Path) -> None:
    """PACSD_IDENTITY__USERS that is not JSON: exit 2, one line naming the section, not the
    value (it holds a password hash), no traceback."""
    users = f'[{{"username": "ris", "password_hash": "{USER_PASSWORD}"'  # the ] is missing
    result = pacsd("config", "show", cwd=tmp_path, PACSD_IDENTITY__USERS=users)
    assert result.returncode == 2
    assert 'error parsing value for field "identity"' in result.stderr
    assert USER_PASSWORD not in result.stderr
    assert "Traceback" not in result.stderr


def test_key_password_and_jwt_secret_are_named_never_shown(tmp_path: Path) -> None:
    """The TLS key password and the JWT secret live in the environment: `config show` names the
    variables; a wrong key password is reported without it."""
    pki = make_pki(tmp_path / "pki")
    tls = pki.listener(key_file=str(pki.encrypted_server_key()), key_password_env="KEY_PW")  # noqa: S106 - a name
    document = {
        "network": {"tls": tls},
        "identity": {"jwt": {"algorithms": ["HS256"], "secret_env": "JWT_SECRET"}},
    }
    path = write(tmp_path, document)
    environment = {"KEY_PW": KEY_PASSWORD, "JWT_SECRET": JWT_SECRET}
    shown = pacsd("config", "show", "--config", str(path), **environment)
    assert shown.returncode == 0, shown.stderr
    assert KEY_PASSWORD not in shown.stdout
    assert JWT_SECRET not in shown.stdout
    assert "KEY_PW" in shown.stdout
    assert "JWT_SECRET" in shown.stdout
    wrong = "not-the-key-password"
    checked = pacsd("config", "check", str(path), KEY_PW=wrong, JWT_SECRET=JWT_SECRET)
    assert checked.returncode == 2
    assert "network.tls.key_password_env: wrong password for" in checked.stderr
    assert wrong not in checked.stderr
    (tmp_path / "key-password").write_text(wrong + "\n", encoding="utf-8")
    password_file = str(tmp_path / "key-password")
    tls_file = {**tls, "key_password_env": None, "key_password_file": password_file}
    path = write(tmp_path, {"network": {"tls": tls_file}})
    checked = pacsd("config", "check", str(path))
    assert checked.returncode == 2
    assert "network.tls.key_password_file: wrong password for" in checked.stderr
    assert wrong not in checked.stderr


def test_a_running_server_logs_no_secret(tmp_path: Path) -> None:
    """A pacsd with an encrypted TLS key, a user with a password and a JWT secret logs none of
    them, not even when a reload is refused for a database URL with a password."""
    pki = make_pki(tmp_path / "pki")
    made = hash_password(USER_PASSWORD)
    tls = pki.listener(key_file=str(pki.encrypted_server_key()), key_password_env="KEY_PW")  # noqa: S106 - a name
    config = base_config(
        tmp_path / "pacsd",
        network={"tls": tls},
        identity={
            "users": [{"username": "ris", "password_hash": made}],
            "jwt": {"algorithms": ["HS256"], "secret_env": "JWT_SECRET"},
        },
    )
    server = PacsdProcess.from_config(
        tmp_path / "pacsd", config, KEY_PW=KEY_PASSWORD, JWT_SECRET=JWT_SECRET
    )
    server.start()
    try:
        config["database"] = {"url": f"postgres://pacsd:{PASSWORD}@db.example.org/pacsd"}
        server.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        server.send_signal(signal.SIGHUP)
        server.wait_for("reload refused; the previous configuration stays in force")
    finally:
        assert server.stop() == 0
    output = server.output() + (tmp_path / "pacsd" / "audit.jsonl").read_text(encoding="utf-8")
    for secret in (PASSWORD, USER_PASSWORD, made, KEY_PASSWORD, JWT_SECRET):
        assert secret not in output
    assert "postgres://pacsd:***@db.example.org/pacsd" in server.output()
