"""Deployment artefacts: the systemd unit, the Dockerfile, .dockerignore and the compose file.

The unit is checked by systemd itself (`systemd-analyze verify`). No container engine runs
where the tests do, so the Dockerfile and compose file are checked against their contract:
what a container platform reads from them (user, port, volume, health check, signals), and
whether every PACSD_* variable they set is a real pacsd setting with a valid value.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from pacsd.settings import (
    CONFIG_ENV_VAR,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    DaemonSettings,
    Settings,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO_ROOT / "deploy" / "pacsd.service"
SAMPLE_ENV_FILE = REPO_ROOT / "deploy" / "pacsd.env"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"

INSTALLED_PACSD = "/opt/pacsd/bin/pacsd"
DATA_DIR = "/var/lib/pacsd"
DICOM_PORT = 11112
DEFAULT_GRACE_PERIOD = DaemonSettings().shutdown_grace_period


# --- helpers -------------------------------------------------------------------------------


def seconds(duration: str) -> float:
    """A systemd or Docker duration ("45", "45s", "1m30s", "1min 30s") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def names_a_setting(variable: str) -> bool:
    """Whether PACSD_<SECTION>__<KEY> (or PACSD_CONFIG) addresses a field of Settings."""
    if variable == CONFIG_ENV_VAR:
        return True
    model: type[BaseModel] = Settings
    path = variable.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER)
    for depth, key in enumerate(path, start=1):
        field = model.model_fields.get(key)
        if field is None:
            return False
        if depth < len(path):
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings pacsd would load (no file) from exactly these PACSD_* variables."""
    ours = {name: value for name, value in environment.items() if name.startswith(ENV_PREFIX)}
    unknown = sorted(name for name in ours if not names_a_setting(name))
    assert not unknown, f"not pacsd settings (typo? two underscores?): {unknown}"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    return load_settings(None)


def sqlite_path(database_url: str) -> str:
    """The file of an absolute SQLite URL (sqlite:////abs/path -> /abs/path)."""
    assert database_url.startswith("sqlite:////"), database_url
    return database_url.removeprefix("sqlite:///")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, by key, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str

    def argv(self) -> list[str]:
        """Exec form (JSON array) or shell form, as a list of words."""
        if self.arguments.startswith("["):
            return [str(word) for word in json.loads(self.arguments)]
        return shlex.split(self.arguments)


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # also skipped inside continuations
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def final_stage(keyword: str) -> list[Instruction]:
    """The final stage's instructions with this keyword."""
    return [each for each in dockerfile_stages()[-1] if each.keyword == keyword]


def final_stage_env() -> dict[str, str]:
    """ENV of the final stage (key=value form)."""
    environment: dict[str, str] = {}
    for instruction in final_stage("ENV"):
        for assignment in shlex.split(instruction.arguments):
            name, equals, value = assignment.partition("=")
            assert equals, f"use ENV key=value, not the legacy form: {instruction.arguments}"
            environment[name] = value
    return environment


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.removeprefix("!").strip("/"))
        parts = path.split("/")
        prefixes = ("/".join(parts[:count]) for count in range(1, len(parts) + 1))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not include
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    tokens = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    regex = "".join(
        wildcards.get(token) or (token if token.startswith("[") else re.escape(token))
        for token in tokens
    )
    return re.compile(regex)


def compose() -> dict[str, Any]:
    """deploy/compose.yaml as data."""
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose_service(name: str) -> dict[str, Any]:
    """One service of the compose file."""
    services = compose()["services"]
    assert name in services, f"no {name!r} service in {COMPOSE_FILE}"
    service: dict[str, Any] = services[name]
    return service


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, mapping or list form."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(entry.partition("=")[::2] for entry in environment)
    return {name: str(value) for name, value in environment.items()}


def named_volume_at(service: dict[str, Any], target: str) -> str:
    """The named volume a service mounts at `target` (fails on a bind mount or none)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, mounted_at, kind = volume.get("source"), volume["target"], volume["type"]
        else:
            source, mounted_at = volume.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        if mounted_at.rstrip("/") == target:
            assert kind == "volume", f"{target} is a {kind} mount, not a named volume"
            return str(source)
    raise AssertionError(f"nothing mounted at {target}")


# --- systemd unit ----------------------------------------------------------------------------


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd accepts the unit: no unknown directive, no unparsable value, runnable commands.

    `verify` exits 0 even for unknown keys or bad values (it logs and ignores them), so any
    line it prints about the unit fails the test too. /opt/pacsd does not exist here: the copy
    runs the pacsd script of the environment running the tests instead.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    pacsd_script = Path(sys.executable).parent / "pacsd"
    assert pacsd_script.is_file(), f"pacsd is not installed next to {sys.executable}"
    text = UNIT_FILE.read_text(encoding="utf-8")
    assert INSTALLED_PACSD in text
    unit_copy = tmp_path / UNIT_FILE.name
    unit_copy.write_text(text.replace(INSTALLED_PACSD, str(pacsd_script)), encoding="utf-8")

    result = subprocess.run(
        [analyze, "verify", str(unit_copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if unit_copy.name in line]
    assert result.returncode == 0, output
    assert about_unit == [], "\n".join(about_unit)


def test_systemd_unit_keeps_its_data_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the installed default configuration, database and storage land in /var/lib/pacsd.

    The unit overrides no setting (the YAML stays authoritative); the default's relative paths
    resolve against WorkingDirectory=, which must be the state directory, the one writable place.
    """
    unit = unit_settings(UNIT_FILE)
    assert unit["StateDirectory"] == ["pacsd"]
    assert unit["WorkingDirectory"] == [DATA_DIR]
    assert not any("PACSD_" in value for value in unit.get("Environment", []))
    settings = settings_from({}, monkeypatch)  # the embedded default = config/pacsd.yaml

    database = os.path.normpath(Path(DATA_DIR, make_url(settings.database.url).database or ""))
    storage = os.path.normpath(Path(DATA_DIR, settings.storage.root))
    assert Path(database).is_relative_to(DATA_DIR)
    assert Path(database).name == "pacsd.sqlite"
    assert Path(storage).is_relative_to(DATA_DIR)


def test_systemd_unit_waits_longer_than_the_shutdown_grace_period() -> None:
    """systemd sends SIGTERM and lets pacsd drain associations before it would SIGKILL."""
    unit = unit_settings(UNIT_FILE)
    assert unit["KillSignal"] == ["SIGTERM"]
    assert seconds(unit["TimeoutStopSec"][-1]) > DEFAULT_GRACE_PERIOD


def test_sample_environment_file_sets_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every PACSD_* example in deploy/pacsd.env, once uncommented, is a valid setting."""
    examples = re.findall(
        r"^#?(PACSD_\w+)=(.*)$", SAMPLE_ENV_FILE.read_text(encoding="utf-8"), re.MULTILINE
    )
    assert examples
    for name, value in examples:
        settings_from({name: value}, monkeypatch)


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_builds_from_slim_python_3_11_or_newer() -> None:
    """Every stage starts from an official python:3.X-slim image with X >= 11."""
    for stage in dockerfile_stages():
        words = [word for word in stage[0].argv() if not word.startswith("--")]
        image = words[0]
        match = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
        assert match, f"not a slim Python image: {image}"
        assert int(match[1]) >= 11, image


def test_dockerfile_runs_pacsd_as_a_non_root_user() -> None:
    """The final stage switches to a user other than root (by name or UID 0)."""
    users = final_stage("USER")
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].arguments.partition(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_listens_on_every_interface_with_data_in_the_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image exposes 11112, binds 0.0.0.0 and keeps database and files in its volume."""
    exposed = {word.removesuffix("/tcp") for each in final_stage("EXPOSE") for word in each.argv()}
    volumes = {word.rstrip("/") for each in final_stage("VOLUME") for word in each.argv()}
    environment = final_stage_env()

    settings = settings_from(environment, monkeypatch)

    assert str(DICOM_PORT) in exposed
    assert DATA_DIR in volumes
    # Every IPv4 interface: "::" would fail to bind in a container without IPv6.
    assert ipaddress.ip_address(settings.network.host) == ipaddress.IPv4Address(0)
    assert settings.network.port == DICOM_PORT
    assert sqlite_path(settings.database.url).startswith(f"{DATA_DIR}/")
    assert settings.storage.root.is_relative_to(DATA_DIR)


def test_dockerfile_health_check_sends_a_c_echo() -> None:
    """HEALTHCHECK runs `pacsd echo` with a C-ECHO timeout shorter than the check's own."""
    healthchecks = final_stage("HEALTHCHECK")
    assert len(healthchecks) == 1
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.+)", healthchecks[0].arguments)
    assert match, healthchecks[0].arguments
    options = dict(option.lstrip("-").split("=") for option in match[1].split())
    command = Instruction("CMD", match[2]).argv()

    assert command[:2] == ["pacsd", "echo"]
    assert {"interval", "timeout", "start-period"} <= options.keys()
    echo_timeout = float(command[command.index("--timeout") + 1])
    assert echo_timeout < seconds(options["timeout"])


def test_dockerfile_serves_by_default_and_stops_on_sigterm() -> None:
    """`docker run IMAGE` runs `pacsd serve`; `docker stop` sends the signal that drains."""
    assert [each.argv() for each in final_stage("ENTRYPOINT")] == [["pacsd"]]
    assert [each.argv() for each in final_stage("CMD")] == [["serve"]]
    assert [each.arguments for each in final_stage("STOPSIGNAL")] == ["SIGTERM"]


def test_dockerignore_admits_the_build_inputs_and_nothing_private() -> None:
    """Every COPY source is in the build context; virtualenv, git, data, secrets are not."""
    sources = [
        word.rstrip("/")
        for stage in dockerfile_stages()
        for each in stage
        if each.keyword == "COPY" and "--from" not in each.arguments
        for word in each.argv()[:-1]
    ]
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f"{source} is kept out of the build context"
    assert not dockerignore_excludes("server/pacsd/cli.py")
    private = [
        ".venv/bin/python",
        ".git/config",
        "var/pacsd.sqlite",
        "tests/unit/test_deploy.py",
        "deploy/.env",
        "server/pacsd/__pycache__/cli.cpython-311.pyc",
    ]
    assert [path for path in private if not dockerignore_excludes(path)] == []


# --- compose -----------------------------------------------------------------------------------


def test_compose_builds_pacsd_from_the_repository_dockerfile() -> None:
    """The pacsd service is built from this repository's Dockerfile."""
    build = compose_service("pacsd")["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_compose_starts_pacsd_after_postgresql_is_healthy() -> None:
    """PostgreSQL 16 has a pg_isready health check and pacsd waits for it to pass."""
    database = compose_service("db")
    assert database["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    assert compose_service("pacsd")["depends_on"]["db"]["condition"] == "service_healthy"


def test_compose_points_pacsd_at_postgresql_without_a_hard_coded_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both services take the password from PACSD_DB_PASSWORD, required, no default."""
    required = re.compile(r"\$\{PACSD_DB_PASSWORD:\?[^}]+\}")
    pacsd_environment = compose_environment(compose_service("pacsd"))
    url = pacsd_environment["PACSD_DATABASE__URL"]
    assert url.startswith("postgresql+psycopg://")
    assert required.search(url), url
    db_password = compose_environment(compose_service("db"))["POSTGRES_PASSWORD"]
    assert required.fullmatch(db_password), db_password

    resolved = {name: required.sub("s3cret", value) for name, value in pacsd_environment.items()}
    settings = settings_from(resolved, monkeypatch)

    assert settings.database.url == required.sub("s3cret", url)


def test_compose_publishes_dicom_and_keeps_data_in_named_volumes() -> None:
    """Port 11112 is published; pacsd's and PostgreSQL's data are declared named volumes."""
    pacsd = compose_service("pacsd")
    published = {
        str(port["target"]) if isinstance(port, dict) else str(port).split(":")[-1]
        for port in pacsd["ports"]
    }
    declared = set(compose().get("volumes") or {})

    assert str(DICOM_PORT) in {port.removesuffix("/tcp") for port in published}
    assert named_volume_at(pacsd, DATA_DIR) in declared
    assert named_volume_at(compose_service("db"), "/var/lib/postgresql/data") in declared


def test_compose_waits_longer_than_the_shutdown_grace_period() -> None:
    """`docker compose stop` gives pacsd more than its drain time before SIGKILL."""
    pacsd = compose_service("pacsd")
    assert seconds(pacsd["stop_grace_period"]) > DEFAULT_GRACE_PERIOD
    assert pacsd["restart"] in {"unless-stopped", "always", "on-failure"}


def test_compose_publishes_the_dicom_tls_port_too() -> None:
    """The DICOM TLS port (network.tls.port's default) is published next to 11112."""
    from pacsd.settings_security import TlsSettings

    published = {
        str(port["target"]) if isinstance(port, dict) else str(port).split(":")[-1]
        for port in compose_service("pacsd")["ports"]
    }
    assert str(TlsSettings().port) in published


# --- compose, two nodes behind HAProxy (compose.cluster.yaml) -----------------------------------

CLUSTER_COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.cluster.yaml"
CLUSTER_NODES = ("pacsd1", "pacsd2")
STORAGE_ROOT = f"{DATA_DIR}/storage"


def cluster_compose() -> dict[str, Any]:
    """deploy/compose.cluster.yaml as data (YAML merge keys resolved)."""
    document = yaml.safe_load(CLUSTER_COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def cluster_node_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a node of the cluster compose file runs with (password filled in)."""
    required = re.compile(r"\$\{PACSD_DB_PASSWORD:\?[^}]+\}")
    environment = compose_environment(cluster_compose()["services"][name])
    assert required.search(environment["PACSD_DATABASE__URL"]), "a hard-coded password"
    resolved = {key: required.sub("s3cret", value) for key, value in environment.items()}
    return settings_from(resolved, monkeypatch)


def balancer_address() -> str:
    """The fixed address of the haproxy service."""
    address = cluster_compose()["services"]["haproxy"]["networks"]["pacsd"]["ipv4_address"]
    return str(address)


def test_cluster_compose_runs_two_named_nodes_on_one_database_and_one_storage_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pacsd1 and pacsd2: built from the repository's Dockerfile, cluster mode on, each its
    own node name and state volume, the same PostgreSQL URL and the same named volume at the
    same storage root; the second starts once the first is healthy (schema creation)."""
    services = cluster_compose()["services"]
    declared = set(cluster_compose().get("volumes") or {})
    settings = {name: cluster_node_settings(name, monkeypatch) for name in CLUSTER_NODES}
    assert all(each.cluster.enabled for each in settings.values())
    assert [each.cluster.name for each in settings.values()] == list(CLUSTER_NODES)
    assert len({each.database.url for each in settings.values()}) == 1
    assert settings["pacsd1"].database.url.startswith("postgresql+psycopg://pacsd:s3cret@db:")
    assert {str(each.storage.root) for each in settings.values()} == {STORAGE_ROOT}
    storage = {named_volume_at(services[name], STORAGE_ROOT) for name in CLUSTER_NODES}
    state = [named_volume_at(services[name], DATA_DIR) for name in CLUSTER_NODES]
    assert len(storage) == 1
    assert storage <= declared
    assert len(set(state)) == 2
    assert set(state) <= declared
    for name in CLUSTER_NODES:
        build = services[name]["build"]
        assert (CLUSTER_COMPOSE_FILE.parent / build["context"]).resolve() == REPO_ROOT
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
        assert seconds(services[name]["stop_grace_period"]) > DEFAULT_GRACE_PERIOD
        assert "ports" not in services[name], "a node bypassing the balancer"
    assert services["pacsd2"]["depends_on"]["pacsd1"]["condition"] == "service_healthy"


def test_cluster_compose_nodes_trust_only_the_balancers_fixed_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The haproxy service has a fixed address in the compose network's subnet; the nodes
    trust PROXY headers from that address alone, on DICOM and on HTTP, and serve HTTP on
    every interface (the health checks come from the balancer)."""
    address = ipaddress.ip_address(balancer_address())
    [subnet] = cluster_compose()["networks"]["pacsd"]["ipam"]["config"]
    assert address in ipaddress.ip_network(subnet["subnet"])
    for name in CLUSTER_NODES:
        settings = cluster_node_settings(name, monkeypatch)
        assert settings.network.proxy_protocol.trusted == [f"{address}/32"]
        assert settings.http.proxy_protocol.trusted == [f"{address}/32"]
        assert ipaddress.ip_address(settings.http.host) == ipaddress.IPv4Address(0)
        # The image's health check (`pacsd echo`, no PROXY header) must still be served.
        assert not settings.network.proxy_protocol.required


def test_cluster_compose_haproxy_sends_proxy_v2_to_every_node_and_checks_readyz() -> None:
    """The balancer's mounted configuration exists, sends a PROXY v2 header to each node's
    DICOM and HTTP ports and checks /readyz; `haproxy -c` accepts it where HAProxy is
    installed. DICOM and HTTP are published on the balancer."""
    haproxy = cluster_compose()["services"]["haproxy"]
    [mount] = [volume for volume in haproxy["volumes"] if "haproxy" in volume.split(":")[1]]
    source = (CLUSTER_COMPOSE_FILE.parent / mount.split(":")[0]).resolve()
    assert source.is_file(), source
    text = source.read_text(encoding="utf-8")
    for name in CLUSTER_NODES:
        assert f"server {name} {name}:{DICOM_PORT}" in text
        assert f"server {name} {name}:11113" in text
    assert text.count("default-server send-proxy-v2 check check-send-proxy") == 2
    assert "http-check send meth GET uri /readyz" in text
    published = {str(port).split(":")[-1] for port in haproxy["ports"]}
    assert {str(DICOM_PORT), "8080"} <= published
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None:
        return
    checked = subprocess.run(
        [binary, "-c", "-f", str(source)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_cluster_compose_s3_placeholder_is_seaweedfs_and_off_by_default() -> None:
    """The object storage placeholder: SeaweedFS with its S3 API, in a profile (not started by
    `up` until pacsd's S3 backend exists), its data in a declared volume."""
    s3 = cluster_compose()["services"]["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs")
    assert s3["command"][:2] == ["server", "-s3"]
    assert s3["profiles"] == ["s3"]
    assert named_volume_at(s3, "/data") in set(cluster_compose()["volumes"])
