"""pacsd configuration: one validated settings tree from a YAML file plus PACSD_* overrides.

Loading is inert (two-phase start): `load_settings` only reads and validates; nothing is
opened or bound until the daemon composes the server from the returned `Settings`.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ByteSize,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pacsd.policy.rules import PolicyRule, default_policies
from pacsd.settings_base import AETitle, Seconds, StrictModel
from pacsd.settings_security import (
    AuditSettings,
    IdentitySettings,
    LimitsSettings,
    TlsSettings,
)

ENV_PREFIX = "PACSD_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "PACSD_CONFIG"


class NetworkSettings(StrictModel):
    """The DICOM listener and its timeouts."""

    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    # The plain-TCP listener on `port`; false leaves only the TLS listener.
    listen_plain: bool = True
    tls: TlsSettings = TlsSettings()
    # Socket options on every accepted and opened connection (long links: larger buffers).
    tcp_keepalive: bool = True
    tcp_nodelay: bool = True
    send_buffer_size: ByteSize | None = None  # None: the kernel's default
    receive_buffer_size: ByteSize | None = None
    # Connections that have not (yet) associated: in all, and from one source address.
    max_pending_connections: int = Field(default=64, ge=1, le=10_000)
    max_pending_per_address: int = Field(default=16, ge=1, le=10_000)
    max_pdu_size: int = Field(default=262_144, ge=0)
    # An idle association costs a few kilobytes and no thread: the limits can be generous. One
    # peer address gets at most its share, so that one host cannot lock every modality out.
    max_associations: int = Field(default=256, ge=1, le=10_000)
    max_associations_per_address: int = Field(default=64, ge=1, le=10_000)
    acse_timeout: Seconds = 30.0
    dimse_timeout: Seconds = 60.0
    network_timeout: Seconds = 60.0
    connection_timeout: Seconds = 10.0
    # Processes accepting associations on the port (SO_REUSEPORT); 1 = this process alone.
    workers: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _some_listener(self) -> NetworkSettings:
        if not self.listen_plain and not self.tls.enabled:
            raise ValueError("listen_plain false needs tls.enabled true (else nothing listens)")
        return self

    @field_validator("max_pdu_size")
    @classmethod
    def _pdu_size(cls, value: int) -> int:
        # PS3.8 9.3.3.2 / D.1: 0 means "no limit"; otherwise at least the smallest useful PDU.
        if value != 0 and value < 4096:
            raise ValueError("must be 0 (no limit) or at least 4096 bytes")
        return value


class DatabaseSettings(StrictModel):
    """The index database."""

    url: str = "sqlite:///./var/pacsd.sqlite"
    pool_size: int = Field(default=10, ge=1, le=200)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not (value.startswith("sqlite:") or value.startswith("postgresql+psycopg:")):
            raise ValueError(
                "pacsd supports sqlite:///PATH and postgresql+psycopg://USER@HOST/DB URLs"
            )
        return value


class DuplicatePolicy(StrEnum):
    """What C-STORE does with a SOP Instance UID the archive already holds."""

    KEEP_FIRST = "keep-first"
    OVERWRITE = "overwrite"
    REJECT = "reject"


class StorageSettings(StrictModel):
    """Where instance files live."""

    root: Path = Path("./var/storage")
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    min_free_space: ByteSize = ByteSize(1_000_000_000)


class LoggingSettings(StrictModel):
    """Log format and verbosity."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # No effect since pacsd has its own DICOM engine (kept so that older files still load;
    # a warning at start-up says so). At DEBUG, `level` traces every PDU.
    pynetdicom_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    log_patient_data: bool = False


class QuerySettings(StrictModel):
    """C-FIND: what a query may cost and how person names match."""

    # Matches beyond this end the query with 0xA700 and an Error Comment asking to narrow it.
    max_results: int = Field(default=10_000, ge=1)
    # PS3.4 C.2.2.2.1 lets PN literal matching ignore case; pacsd matches exactly by default.
    person_name_case_insensitive: bool = False


class WorklistSettings(StrictModel):
    """Modality Worklist upkeep."""

    # Remove a worklist item once an MPPS for its step is COMPLETED (PS3.4 F.7: the step was
    # performed, so modalities need not see it again). Off: items stay until removed.
    retire_completed: bool = False


class CommitmentSettings(StrictModel):
    """Storage Commitment: where and how persistently reports are delivered."""

    # Report on the requesting association while it is open (else on a new one, from peers).
    report_on_same_association: bool = True
    # Seconds before the first retry of an undelivered report; doubled per attempt up to max.
    retry_initial: float = Field(default=5.0, gt=0)
    retry_max: float = Field(default=300.0, gt=0)


class DaemonSettings(StrictModel):
    """Process life cycle."""

    shutdown_grace_period: Annotated[float, Field(ge=0)] = 30.0


class Peer(StrictModel):
    """A remote AE pacsd knows by title (the AE table)."""

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    description: str = ""
    # Associate over DICOM TLS (network.tls's certificate, key and CA file verify the peer).
    tls: bool = False
    tls_server_name: str | None = None  # checked against the peer's certificate; default host


class StatusSettings(StrictModel):
    """The read-only status interface (`pacsd associations`): HTTP on a loopback address."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=11113, ge=0, le=65535)


class Settings(BaseSettings):
    """The whole pacsd configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    ae_title: AETitle = "PACSD"
    network: NetworkSettings = NetworkSettings()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()
    status: StatusSettings = StatusSettings()
    query: QuerySettings = QuerySettings()
    commitment: CommitmentSettings = CommitmentSettings()
    worklist: WorklistSettings = WorklistSettings()
    limits: LimitsSettings = LimitsSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    peers: list[Peer] = Field(default_factory=list)
    policies: list[PolicyRule] = Field(default_factory=default_policies)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        titles = [peer.ae_title for peer in self.peers]
        duplicates = sorted({t for t in titles if titles.count(t) > 1})
        if duplicates:
            raise ValueError(f"peers: AE title listed twice: {', '.join(duplicates)}")
        names = [rule.name for rule in self.policies]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"policies: rule name used twice: {', '.join(repeated)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """A configuration that cannot be used; `lines` holds one message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def config_path_from(cli_path: Path | None) -> Path | None:
    """The configuration file to use: --config, else PACSD_CONFIG, else none (embedded)."""
    if cli_path is not None:
        return cli_path
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else None


def load_settings(path: Path | None) -> Settings:
    """Read `path` (or the embedded default when None), apply PACSD_* overrides, validate."""
    document = _read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "embedded default"
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError([_describe(source, error) for error in exc.errors()]) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return document


def _describe(source: str, error: ErrorDetails) -> str:
    """One line: where the value came from, the key path, and what is wrong with it."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) if loc else "(top level)"
    env_name = _env_override_for(loc)
    origin = f"environment {env_name}" if env_name else source
    if error["type"] == "extra_forbidden":
        problem = "unknown key"
    else:
        problem = error["msg"].removeprefix("Value error, ")
        secret = any("password" in part for part in loc)  # a plain password in password_hash
        shown = "input" in error and error["type"] not in ("missing",) and not secret
        if shown and _is_scalar(error["input"]):
            problem += f" (got {error['input']!r})"
    return f"{origin}: {key}: {problem}"


def _env_override_for(loc: list[str]) -> str | None:
    """The PACSD_* variable that set the value at `loc`, if one did (longest match wins)."""
    present = {name.upper() for name in os.environ}
    for depth in range(len(loc), 0, -1):
        candidate = (ENV_PREFIX + ENV_NESTED_DELIMITER.join(loc[:depth])).upper()
        if candidate in present:
            return candidate
    return None


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
