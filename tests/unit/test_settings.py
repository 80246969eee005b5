"""Configuration loading: defaults, the documented file, environment overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsd.settings import ConfigError, DuplicatePolicy, config_path_from, load_settings

REPOSITORY = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    """A configuration file with `text`."""
    path = tmp_path / "pacsd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path | None) -> list[str]:
    """The one-line messages a configuration produces."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.lines


def test_embedded_default_is_the_documented_one() -> None:
    """No file: AE PACSD on 11112, SQLite and storage under ./var, accept every peer."""
    settings = load_settings(None)
    assert settings.ae_title == "PACSD"
    assert settings.network.port == 11112
    assert settings.database.url == "sqlite:///./var/pacsd.sqlite"
    assert settings.storage.root == Path("./var/storage")
    assert settings.storage.duplicate_policy is DuplicatePolicy.KEEP_FIRST
    [rule] = settings.policies
    assert rule.action == "accept"
    assert rule.match.calling_ae is None
    assert rule.match.address is None
    assert rule.sop_classes == [
        "verification",
        "storage",
        "query-retrieve",
        "worklist",
        "mpps",
        "storage-commitment",
        "ups",
        "print",
    ]
    assert rule.peer_scp_role == ["storage"]


def test_config_file_in_repository_equals_the_embedded_default() -> None:
    """config/pacsd.yaml documents exactly the built-in defaults."""
    assert load_settings(REPOSITORY / "config" / "pacsd.yaml") == load_settings(None)


def test_file_values_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment (PACSD_SECTION__KEY) overrides the file, which overrides defaults."""
    path = write(tmp_path, "ae_title: ARCHIVE\nnetwork:\n  port: 104\n  max_pdu_size: 65536\n")
    monkeypatch.setenv("PACSD_NETWORK__PORT", "4242")
    monkeypatch.setenv("PACSD_STORAGE__MIN_FREE_SPACE", "2GiB")
    monkeypatch.setenv("PACSD_PEERS", '[{"ae_title": "VIEWER", "host": "10.0.0.7", "port": 104}]')
    settings = load_settings(path)
    assert settings.ae_title == "ARCHIVE"
    assert settings.network.port == 4242
    assert settings.network.max_pdu_size == 65536
    assert int(settings.storage.min_free_space) == 2 * 1024**3
    assert settings.peers[0].ae_title == "VIEWER"


def test_config_path_from_cli_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over PACSD_CONFIG; neither means the embedded default."""
    monkeypatch.delenv("PACSD_CONFIG", raising=False)
    assert config_path_from(None) is None
    monkeypatch.setenv("PACSD_CONFIG", "/etc/pacsd/pacsd.yaml")
    assert config_path_from(None) == Path("/etc/pacsd/pacsd.yaml")
    assert config_path_from(Path("other.yaml")) == Path("other.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour: blue\n", "colour: unknown key"),
        ("network:\n  prot: 104\n", "network.prot: unknown key"),
        (
            "peers:\n  - {ae_title: A, host: h, port: 1, secret: x}\n",
            "peers.0.secret: unknown key",
        ),
        ("network:\n  port: eleven\n", "network.port: Input should be a valid integer"),
        ("network:\n  port: 70000\n", "network.port: Input should be less than or equal to 65535"),
        ("network:\n  max_pdu_size: 100\n", "network.max_pdu_size: must be 0 (no limit)"),
        ("ae_title: 'BACK\\\\SLASH'\n", "ae_title: an AE title is 1 to 16 printable ASCII"),
        ("ae_title: SEVENTEEN_CHARS_XX\n", "ae_title: an AE title is 1 to 16"),
        ("storage:\n  duplicate_policy: sometimes\n", "storage.duplicate_policy: Input should be"),
        ("storage:\n  min_free_space: lots\n", "storage.min_free_space:"),
        ("database:\n  url: mysql://x/y\n", "database.url: pacsd supports sqlite"),
        ("logging:\n  format: xml\n", "logging.format: Input should be"),
        ("policies:\n  - {name: a, sop_classes: [printing]}\n", "policies.0.sop_classes.0:"),
        ("network: 5\n", "network: Input should be a valid dictionary"),
    ],
)
def test_each_mistake_is_one_line_naming_file_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Wrong keys, types and values: one line '<file>: <key path>: <problem>' each."""
    path = write(tmp_path, text)
    lines = errors_of(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {expected}"), lines[0]


def test_several_mistakes_give_one_line_each(tmp_path: Path) -> None:
    """Every problem is reported, not just the first."""
    path = write(tmp_path, "network:\n  port: -1\n  bogus: 1\nstorage:\n  root: []\n")
    lines = errors_of(path)
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_duplicate_peer_titles_are_refused(tmp_path: Path) -> None:
    """The AE table cannot list one AE title twice."""
    path = write(
        tmp_path,
        "peers:\n"
        "  - {ae_title: VIEWER, host: a, port: 1}\n"
        "  - {ae_title: VIEWER, host: b, port: 2}\n",
    )
    [line] = errors_of(path)
    assert "AE title listed twice: VIEWER" in line


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error points at where it is."""
    path = write(tmp_path, "network:\n  port: [1, 2\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}: line ")
    assert "invalid YAML" in line


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A list or scalar at the top level is refused."""
    [line] = errors_of(write(tmp_path, "- a\n- b\n"))
    assert "top level must be a mapping" in line


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A configuration file that does not exist is an error, not the default."""
    [line] = errors_of(tmp_path / "absent.yaml")
    assert line.startswith(f"{tmp_path / 'absent.yaml'}: cannot read")


def test_environment_mistake_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad override is attributed to its environment variable, not to the file."""
    monkeypatch.setenv("PACSD_NETWORK__PORT", "not-a-port")
    [line] = errors_of(write(tmp_path, "ae_title: PACSD\n"))
    assert line.startswith("environment PACSD_NETWORK__PORT: network.port:")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    """An empty file is a valid configuration with every default."""
    assert load_settings(write(tmp_path, "")) == load_settings(None)


def test_relative_paths_in_a_file_resolve_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path setting written relative in a file is under the file's folder, whatever
    the working directory; absolute ones and other URLs stay as written."""
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(
        etc,
        "database: {url: 'sqlite:///var/index.sqlite?timeout=5'}\n"
        "storage: {root: var/storage}\n"
        "audit: {file: ../log/audit.jsonl}\n"
        "print: {folder: films}\n"
        "network:\n"
        "  tls: {certificate_file: tls/pacsd.pem, key_file: /abs/key.pem, ca_file: tls/ca.pem,\n"
        "        key_password_file: tls/password}\n",
    )
    settings = load_settings(Path("etc/pacsd.yaml"))
    assert settings.database.url == f"sqlite:///{etc / 'var/index.sqlite'}?timeout=5"
    assert settings.storage.root == etc / "var" / "storage"
    assert settings.audit.file == etc / "../log/audit.jsonl"
    assert settings.print.folder == etc / "films"
    tls = settings.network.tls
    assert (tls.certificate_file, tls.key_file) == (etc / "tls/pacsd.pem", Path("/abs/key.pem"))
    assert (tls.ca_file, tls.key_password_file) == (etc / "tls/ca.pem", etc / "tls/password")
    path.write_text("database: {url: 'sqlite:///:memory:'}\n", encoding="utf-8")
    assert load_settings(path).database.url == "sqlite:///:memory:"


def test_defaults_and_environment_paths_stay_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the file does not write (the embedded ./var defaults) and PACSD_* overrides are
    not moved to the file's folder: they are the working directory's."""
    monkeypatch.setenv("PACSD_STORAGE__ROOT", "data")
    settings = load_settings(write(tmp_path, "ae_title: ARCHIVE\n"))
    assert settings.database.url == "sqlite:///./var/pacsd.sqlite"
    assert settings.storage.root == Path("data")
    assert settings.audit.file == Path("./var/audit.jsonl")


def test_jwt_key_files_and_lists_of_paths_resolve_too(tmp_path: Path) -> None:
    """A list of paths (identity.jwt.public_key_files) resolves entry by entry."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "idp.pem").write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    path = write(tmp_path, "identity: {jwt: {public_key_files: [idp.pem]}}\n")
    settings = load_settings(path)
    assert settings.identity.jwt is not None
    assert settings.identity.jwt.public_key_files == [tmp_path / "idp.pem"]


def test_a_refused_database_url_is_shown_without_its_password(tmp_path: Path) -> None:
    """postgres://USER:PASSWORD@HOST/DB is refused naming the key; the password is masked."""
    path = write(tmp_path, "database: {url: 'postgres://pacsd:Pa55word@db/pacsd'}\n")
    [line] = errors_of(path)
    assert line.startswith(f"{path}: database.url: pacsd supports sqlite:///PATH")
    assert line.endswith("(got 'postgres://pacsd:***@db/pacsd')")
