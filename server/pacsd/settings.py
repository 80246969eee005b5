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
from pydantic_settings.exceptions import SettingsError

from pacsd.policy.rules import SITE_NAMES_PENDING, PolicyRule, default_policies
from pacsd.settings_base import AETitle, Seconds, StrictModel
from pacsd.settings_paths import resolve_relative_paths
from pacsd.settings_secrets import is_secret_location, masked_value
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
        from sqlalchemy.engine import make_url  # here: `pacsd --help` need not import it

        try:
            make_url(value)
        except Exception:  # never echo the URL: it may hold a password (settings_secrets.py)
            raise ValueError(
                "not a valid URL (a bad port? percent-encode @ : / in the password)"
            ) from None
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
    # The default of policy rules without `person_name_matching`; negotiated fuzzy semantic
    # matching (PS3.4 C.5.1.1, K.5.1) overrides both.
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
    # An undelivered report is given up (logged, audited) this many seconds after its request
    # arrived, as ups.report_lifetime, or after this many attempts (None: no limit by count).
    report_lifetime: float = Field(default=86400.0, gt=0)
    max_attempts: int | None = Field(default=None, ge=1)


class UpsSettings(StrictModel):
    """Unified Procedure Step (PS3.4 Annex CC): event reports and workitem upkeep."""

    # Report on a subscriber's open association when it has one (else on a new one, from peers).
    report_on_open_association: bool = True
    # Seconds before the first retry of an undelivered report; doubled per attempt up to max.
    retry_initial: float = Field(default=5.0, gt=0)
    retry_max: float = Field(default=300.0, gt=0)
    # An undelivered report is given up (and logged) this many seconds after it was queued.
    report_lifetime: float = Field(default=86400.0, gt=0)
    # Grant deletion locks (PS3.4 CC.2.3.3); false subscribes without one and answers 0xB301.
    deletion_locks: bool = True
    # A COMPLETED or CANCELED workitem is deleted this many seconds after its final state, once
    # no deletion lock holds it (0: at once).
    keep_final: float = Field(default=3600.0, ge=0)
    # Worklist Label (0074,1202) of a workitem created without one; "" uses ae_title.
    worklist_label: str = Field(default="", max_length=64)
    # AE titles sent the SCP Status Change report at start-up besides the subscribers (the
    # fallback list of PS3.4 CC.2.4.3).
    fallback_subscribers: list[AETitle] = Field(default_factory=list)


FilmSizeID = Literal[
    "8INX10IN", "8_5INX11IN", "10INX12IN", "10INX14IN", "11INX14IN", "11INX17IN",
    "14INX14IN", "14INX17IN", "24CMX24CM", "24CMX30CM", "A4", "A3",
]  # fmt: skip


class PrintSettings(StrictModel):
    """Print Management SCP (PS3.4 H): the file printer, and what it does when asked nothing."""

    # Where printed films go: <folder>/<date>/<film session UID>/. None: <storage.root>/print.
    folder: Path | None = None
    printer_name: str = Field(default="PACSD", min_length=1, max_length=64)  # Printer N-GET
    # Printer pixels per inch for Requested Resolution ID STANDARD and HIGH (a 14x17 in film at
    # 150 dpi is 2100 x 2550 pixels).
    standard_dpi: int = Field(default=150, ge=50, le=600)
    high_dpi: int = Field(default=300, ge=50, le=1200)
    # Defaults of the Film Session and Film Box attributes an SCU leaves out (PS3.3 C.13).
    film_size_id: FilmSizeID = "14INX17IN"
    medium_type: Literal["PAPER", "CLEAR FILM", "BLUE FILM", "MAMMO CLEAR FILM",
                         "MAMMO BLUE FILM"] = "BLUE FILM"  # fmt: skip
    magnification_type: Literal["REPLICATE", "BILINEAR", "CUBIC", "NONE"] = "BILINEAR"
    border_density: str = Field(default="BLACK", pattern=r"^(BLACK|WHITE|[0-9]{1,3})$")
    empty_image_density: str = Field(default="BLACK", pattern=r"^(BLACK|WHITE|[0-9]{1,3})$")
    # The printer's density range in hundredths of OD: min_density is white in the files,
    # max_density black. Requests beyond it are answered 0xB605 and held to it.
    min_density: int = Field(default=20, ge=0, le=1000)
    max_density: int = Field(default=300, ge=1, le=1000)
    # Write a PDF of each film session's films beside the PNGs.
    pdf: bool = True
    # Images one film session (one association) may hold in memory; beyond it 0xC605.
    max_session_memory: ByteSize = ByteSize(256 * 1024**2)
    # Below this much free space under the print folder the Printer Status is WARNING (SUPPLY
    # LOW); below storage.min_free_space FAILURE (SUPPLY EMPTY). None: twice min_free_space.
    warning_free_space: ByteSize | None = None

    @model_validator(mode="after")
    def _ranges(self) -> PrintSettings:
        if self.min_density >= self.max_density:
            raise ValueError("min_density must be below max_density")
        if self.high_dpi < self.standard_dpi:
            raise ValueError("high_dpi must not be below standard_dpi")
        return self


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


class HttpSettings(StrictModel):
    """The HTTP interface: /associations, /healthz, /readyz, /metrics (pacsd.http)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=11113, ge=0, le=65535)
    # uvicorn's access log, through pacsd's log (one line per HTTP request); off by default.
    access_log: bool = False
    # With network.workers > 1: where the workers keep their metric files (prometheus_client's
    # multiprocess mode); for them only, emptied at start. None: a new folder under the
    # system's temporary directory, removed at exit.
    metrics_dir: Path | None = None


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
    http: HttpSettings = HttpSettings()
    # The old name of `http` (before the HTTP interface grew beyond /associations): still read,
    # with a warning at start-up. Never both.
    status: HttpSettings | None = None
    query: QuerySettings = QuerySettings()
    commitment: CommitmentSettings = CommitmentSettings()
    ups: UpsSettings = UpsSettings()
    worklist: WorklistSettings = WorklistSettings()
    print: PrintSettings = PrintSettings()
    limits: LimitsSettings = LimitsSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    peers: list[Peer] = Field(default_factory=list)
    policies: list[PolicyRule] = Field(default_factory=default_policies)
    # Site services to load: names of entry points in the group pacsd.services
    # (pacsd/extensions.py). Empty: none, and no entry point is looked up.
    extensions: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]] = Field(
        default_factory=list
    )

    @model_validator(mode="before")
    @classmethod
    def _status_is_http(cls, data: Any) -> Any:
        """`status:` (deprecated) configures the HTTP interface when `http:` is absent."""
        if isinstance(data, dict) and data.get("status") is not None:
            if data.get("http") is not None:
                raise ValueError("status: the old name of http; keep only http")
            data = {**data, "http": data["status"]}
        return data

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
    """Read `path` (or the embedded default when None), apply PACSD_* overrides, validate.

    With `extensions`, in two passes: the first takes the policies' `site:` names on trust,
    its settings are handed to the extensions' factories (pacsd/extensions.py), which register
    their groups, and the second validates everything, those names included.
    """
    # Relative paths in a file resolve against its folder (settings_paths.py), not the cwd.
    document = resolve_relative_paths(Settings, _read_yaml(path), path) if path else {}
    source = str(path) if path is not None else "embedded default"
    if not document.get("extensions") and not _env_names_extensions():
        return _validated(document, source)
    from pacsd import extensions

    pending = SITE_NAMES_PENDING.set(True)
    try:
        first = _validated(document, source)
    finally:
        SITE_NAMES_PENDING.reset(pending)
    try:
        extensions.load(first.extensions, first)
    except extensions.ExtensionError as exc:
        raise ConfigError([f"{source}: extensions: {exc}"]) from None
    return _validated(document, source)


def _validated(document: dict[str, Any], source: str) -> Settings:
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError([_describe(source, error) for error in exc.errors()]) from None
    except SettingsError as exc:  # a PACSD_* value that is not JSON; never repeated (a secret?)
        raise ConfigError([f"environment: {exc} (sections and lists take JSON)"]) from None


def _env_names_extensions() -> bool:
    """Does the environment set `extensions` (PACSD_EXTENSIONS, any case)?"""
    variable = f"{ENV_PREFIX}EXTENSIONS"
    return any(name.upper() == variable for name in os.environ)


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
        secret = is_secret_location(loc)  # e.g. a plain password put in password_hash
        shown = "input" in error and error["type"] not in ("missing",) and not secret
        if shown and _is_scalar(error["input"]):
            problem += f" (got {masked_value(error['input'])!r})"  # a URL's password masked
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
