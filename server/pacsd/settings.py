"""pacsd configuration: one validated settings tree from a YAML file plus PACSD_* overrides.

Loading is inert (two-phase start): `load_settings` only reads and validates; nothing is
opened or bound until the daemon composes the server from the returned `Settings`.
"""

from __future__ import annotations

import ipaddress
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

from pacsd.policy.rules import (
    SITE_NAMES_PENDING,
    Networks,
    PolicyRule,
    TextPatterns,
    default_policies,
)
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


class ProxyProtocolSettings(StrictModel):
    """PROXY protocol headers (v1 or v2) from TCP balancers in front of a listener
    (engine/proxy_protocol.py): off while `trusted` is empty."""

    # The balancers' addresses (CIDR networks). A connection from one of them must start with
    # a PROXY header, whose client address then stands for the connection's everywhere; a
    # header from any other address is refused.
    trusted: list[str] = Field(default_factory=list)
    # True: connections from other addresses (not through a balancer) are refused.
    required: bool = False

    @field_validator("trusted", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("trusted")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        try:
            return [str(ipaddress.ip_network(network.strip(), strict=True)) for network in value]
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR network: {exc}") from None

    @model_validator(mode="after")
    def _required_needs_trusted(self) -> ProxyProtocolSettings:
        if self.required and not self.trusted:
            raise ValueError("required: true needs trusted balancer addresses")
        return self


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
    # auto: with several workers and at least as many CPUs, each worker on a CPU of its own
    # (pacsd.workers); none: wherever the kernel schedules them.
    cpu_affinity: Literal["auto", "none"] = "auto"
    # Behind a TCP balancer: PROXY protocol headers from its addresses (plain and TLS ports).
    proxy_protocol: ProxyProtocolSettings = ProxyProtocolSettings()

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


class S3Settings(StrictModel):
    """An S3-compatible object store holding the instance files (storage/s3.py)."""

    # None: AWS's own endpoint for `region`; anything else names the service (SeaweedFS,
    # MinIO, Ceph RGW, ...): http(s)://host:port.
    endpoint_url: str | None = None
    bucket: str = ""
    # Prepended to each object key (the same relative path as under a filesystem root).
    prefix: str = ""
    region: str | None = None
    # Names of environment variables holding the credentials: the secrets are never in the file.
    # Both None: boto3's default chain (instance role, ~/.aws, AWS_* variables).
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    multipart_threshold: ByteSize = ByteSize(16 * 1024**2)
    multipart_chunk_size: ByteSize = ByteSize(8 * 1024**2)
    verify_tls: bool = True

    @field_validator("multipart_chunk_size")
    @classmethod
    def _part_size(cls, value: ByteSize) -> ByteSize:
        if value < 5 * 1024**2:  # the S3 API refuses smaller parts but the last
            raise ValueError("must be at least 5MiB (the smallest part S3 accepts)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative key prefix without '..'")
        return value


class StorageSettings(StrictModel):
    """Where instance files live."""

    root: Path = Path("./var/storage")
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    min_free_space: ByteSize = ByteSize(1_000_000_000)
    backend: Literal["filesystem", "s3"] = "filesystem"
    s3: S3Settings = S3Settings()

    @model_validator(mode="after")
    def _s3_complete(self) -> StorageSettings:
        if self.backend == "s3":
            if not self.s3.bucket:
                raise ValueError("storage.backend s3 needs storage.s3.bucket")
            if self.s3.endpoint_url is None and self.s3.region is None:
                raise ValueError(
                    "storage.backend s3 needs storage.s3.endpoint_url (or region, for AWS)"
                )
            if (self.s3.access_key_id_env is None) != (self.s3.secret_access_key_env is None):
                raise ValueError(
                    "storage.s3 needs both access_key_id_env and secret_access_key_env, or neither"
                )
        return self


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


class RetentionSettings(StrictModel):
    """Automatic deletion of studies (pacsd.admin.retention); off by default. A study's age is
    the time since its last instance arrived. Each deletion is audited (Study Deleted)."""

    enabled: bool = False  # run the rules every `interval` in the server (worker 0)
    max_age_days: int | None = Field(default=None, ge=1)  # delete studies older than this
    # Delete the oldest studies while the storage root has less free space than this.
    min_free_space: ByteSize | None = None
    interval: Seconds = 3600.0
    dry_run: bool = False  # log (and list) what would go; delete nothing
    max_studies_per_run: int = Field(default=1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _some_rule(self) -> RetentionSettings:
        if self.enabled and self.max_age_days is None and self.min_free_space is None:
            raise ValueError("enabled needs max_age_days or min_free_space")
        return self


class ClusterSettings(StrictModel):
    """Several pacsd nodes on one PostgreSQL database and one storage root (pacsd.cluster);
    off by default. Queued work (storage commitment and UPS event reports) is claimed per
    node with a lease; a node that stops renewing its leases (it died) leaves its work to the
    others within `lease` seconds."""

    enabled: bool = False
    # This node's name in the registry (`pacsd nodes`) and on its claims; "" = the hostname.
    # Unique per node: two nodes with one name would share their claims.
    node_name: str = Field(default="", max_length=64)
    lease: Seconds = 30.0  # how long a claim on a queued item lasts without renewal
    heartbeat: Seconds = 5.0  # seconds between two heartbeats (and lease renewals)

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> ClusterSettings:
        if self.lease < 2 * self.heartbeat:
            raise ValueError("lease must be at least twice heartbeat (claims are renewed then)")
        return self

    @property
    def name(self) -> str:
        """The node's name: node_name, else the hostname."""
        import socket  # here: settings stay cheap to import

        return self.node_name or socket.gethostname()


class Peer(StrictModel):
    """A remote AE pacsd knows by title (the AE table)."""

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    description: str = ""
    # Associate over DICOM TLS (network.tls's certificate, key and CA file verify the peer).
    tls: bool = False
    tls_server_name: str | None = None  # checked against the peer's certificate; default host


HttpPermission = Literal["read", "upload", "delete", "admin"]


class HttpRule(StrictModel):
    """Who may do what over HTTP (pacsd.http.access). A rule matches a request when every key
    given fits; the request is allowed when any matching rule allows its permission."""

    name: str = Field(min_length=1, max_length=64)
    # Usernames (patterns with * and ?) verified by HTTP basic (identity.users) or a bearer JWT
    # (identity.jwt); "*": any authenticated user. Absent: anyone, anonymous requests included.
    users: TextPatterns | None = None
    address: Networks | None = None  # the client's address, in one of these networks
    allow: list[HttpPermission] = Field(min_length=1)


def default_http_rules() -> list[HttpRule]:
    """The embedded default: clients on this host (loopback) may read, upload and see the
    admin views; nobody may delete, and other hosts get nothing, until rules say so."""
    return [
        HttpRule(
            name="this-host",
            address=["127.0.0.0/8", "::1/128"],
            allow=["read", "upload", "admin"],
        )
    ]


class CorsSettings(StrictModel):
    """Cross-origin requests (a browser viewer served from another origin); none by default."""

    allow_origins: list[str] = Field(default_factory=list)  # e.g. https://viewer.example.org
    allow_credentials: bool = False  # browsers send cookies/authorization cross-origin
    max_age: int = Field(default=600, ge=0, le=86400)  # seconds a preflight answer is kept


class HttpSettings(StrictModel):
    """The HTTP interface: DICOMweb, the admin API, the web page, /associations, /healthz,
    /readyz, /metrics (pacsd.http)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=11113, ge=0, le=65535)
    # HTTPS with the certificate and key of network.tls (the same files as DICOM TLS).
    tls: bool = False
    rules: list[HttpRule] = Field(default_factory=default_http_rules)
    cors: CorsSettings = CorsSettings()
    # uvicorn's access log, through pacsd's log (one line per HTTP request); off by default.
    access_log: bool = False
    # Behind a TCP balancer: PROXY protocol headers from its addresses (not with `tls`).
    proxy_protocol: ProxyProtocolSettings = ProxyProtocolSettings()
    # With network.workers > 1: where the workers keep their metric files (prometheus_client's
    # multiprocess mode); for them only, emptied at start. None: a new folder under the
    # system's temporary directory, removed at exit.
    metrics_dir: Path | None = None

    @model_validator(mode="after")
    def _proxy_protocol_without_tls(self) -> HttpSettings:
        # The header comes before the TLS handshake, which uvicorn's server makes at accept.
        if self.tls and self.proxy_protocol.trusted:
            raise ValueError(
                "proxy_protocol with tls is not supported: let the balancer terminate HTTPS, "
                "or forward plain HTTP to pacsd"
            )
        return self


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
    retention: RetentionSettings = RetentionSettings()
    cluster: ClusterSettings = ClusterSettings()
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
        http_names = [rule.name for rule in self.http.rules]
        repeated = sorted({name for name in http_names if http_names.count(name) > 1})
        if repeated:
            raise ValueError(f"http.rules: rule name used twice: {', '.join(repeated)}")
        if self.cluster.enabled and self.database.url.startswith("sqlite:"):
            raise ValueError(
                "cluster.enabled needs a PostgreSQL database (database.url); "
                "SQLite serves one node only"
            )
        tls = self.network.tls
        if self.http.tls and (tls.certificate_file is None or tls.key_file is None):
            raise ValueError(
                "http.tls needs network.tls.certificate_file and network.tls.key_file "
                "(HTTPS uses the DICOM TLS certificate)"
            )
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
