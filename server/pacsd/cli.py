"""The `pacsd` command. Exit codes: 0 ok, 2 configuration error, 1 anything else."""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pacsd import __version__
from pacsd.settings import ConfigError, Settings, config_path_from, load_settings

if TYPE_CHECKING:
    from pacsd.index.database import IndexDatabase

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Configuration file (default: $PACSD_CONFIG, else the embedded default).",
)


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        click.echo(f"pacsd: {line}", err=True)
    sys.exit(code)


def _settings(config_path: Path | None) -> tuple[Settings, Path | None]:
    path = config_path_from(config_path)
    try:
        return load_settings(path), path
    except ConfigError as exc:
        _fail(exc.lines, EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pacsd")
def main() -> None:
    """pacsd: a PACS-style DICOM server daemon."""


@main.command()
@CONFIG_OPTION
def serve(config_path: Path | None) -> None:
    """Run the server in the foreground, logging to stdout."""
    from pacsd.daemon import serve as run_daemon
    from pacsd.index.schema import SchemaOutOfDate
    from pacsd.logs import configure_logging, get_logger

    settings, path = _settings(config_path)
    logging_settings = settings.logging
    configure_logging(logging_settings.format, logging_settings.level)
    try:
        code = run_daemon(settings, path)
    except (SchemaOutOfDate, OSError, OperationalError) as exc:
        problem = _start_problem(exc)
        get_logger("pacsd").error("cannot start", problem=problem)
        _fail([f"cannot start: {problem}"], EXIT_FAILURE)
    sys.exit(code)


def _start_problem(exc: Exception) -> str:
    """One line an operator can act on, for the errors that stop start-up."""
    if isinstance(exc, OperationalError):
        return f"index database unreachable: {str(exc.orig).splitlines()[0]}"
    return str(exc)


@main.group()
def config() -> None:
    """Check or show configuration."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def config_check(file: Path) -> None:
    """Validate FILE (with PACSD_* overrides) without starting anything."""
    settings, _ = _settings(file)
    _check_tls_files(file, settings)
    click.echo(f"{file}: ok (AE {settings.ae_title}, port {settings.network.port})")


def _check_tls_files(file: Path, settings: Settings) -> None:
    """Load the certificate, key (with its password) and CA file as `serve` would."""
    from pacsd.engine.tls import TlsSetupError, client_context, server_context

    tls = settings.network.tls
    try:
        if tls.enabled:
            server_context(tls)
        if tls.enabled or any(peer.tls for peer in settings.peers):
            client_context(tls)
    except TlsSetupError as exc:
        _fail([f"{file}: {exc}"], EXIT_CONFIG)


@config.command("show")
@CONFIG_OPTION
def config_show(config_path: Path | None) -> None:
    """Print the effective configuration as YAML, secrets masked."""
    settings, _ = _settings(config_path)
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with passwords replaced by ***."""
    document: dict[str, Any] = settings.model_dump(mode="json")
    document["database"]["url"] = make_url(settings.database.url).render_as_string(
        hide_password=True
    )
    return document


@main.group()
def policy() -> None:
    """Inspect the acceptance policies."""


EXIT_DENIED = 3


@policy.command("explain")
@CONFIG_OPTION
@click.option("--calling-ae", required=True, help="The peer's AE title.")
@click.option("--called-ae", default=None, help="The AE title called (default: ae_title).")
@click.option("--address", required=True, help="The peer's IP address.")
@click.option("--username", default=None, help="User identity (username) the peer sends.")
@click.option("--tls-subject", default=None, help="Client certificate subject (RFC 4514).")
@click.option("--sop", default=None, help="SOP class: keyword, UID or group.")
@click.option("--ts", default=None, help="Transfer syntax: keyword, UID or group (with --sop).")
@click.option(
    "--operation",
    # dicom/sop_classes.OPERATIONS, written out: importing it would load pydicom for --help.
    type=click.Choice(
        ["echo", "store", "find", "get", "move", "worklist", "commit", "mpps", "print", "ups"]
    ),
    default=None,
)
@click.option("--destination", default=None, help="C-MOVE destination AE title.")
def policy_explain(config_path: Path | None, **options: Any) -> None:
    """Which rule matches an association, what it would accept, and why; no server needed.

    Exit status 0 when the association (and the SOP class, transfer syntax and operation asked
    about) would be accepted, 3 when something would be refused, 2 for a configuration error.
    """
    from pacsd.dicom import sop_classes, transfer_syntaxes
    from pacsd.explain import Question, explain
    from pacsd.policy.engine import AssociationRequest

    settings, _ = _settings(config_path)
    checks = (
        ("--sop", sop_classes.resolve),
        ("--ts", transfer_syntaxes.resolve),
        ("--address", ipaddress.ip_address),
    )
    for option, check in checks:
        value = options[option.removeprefix("--")]
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from None
    request = AssociationRequest(
        calling_ae_title=options["calling_ae"],
        called_ae_title=options["called_ae"] or settings.ae_title,
        peer_address=options["address"],
        username=options["username"],
        tls_subject=options["tls_subject"],
    )
    question = Question(options["sop"], options["ts"], options["operation"], options["destination"])
    explanation = explain(settings, request, question)
    click.echo("\n".join(explanation.lines))
    sys.exit(EXIT_OK if explanation.allowed else EXIT_DENIED)


@main.group()
def db() -> None:
    """Manage the index database."""


@db.command("upgrade")
@CONFIG_OPTION
def db_upgrade(config_path: Path | None) -> None:
    """Apply pending schema migrations."""
    from pacsd.index.database import create_index_engine
    from pacsd.index.schema import upgrade

    settings, _ = _settings(config_path)
    engine = create_index_engine(settings.database.url, pool_size=1)
    try:
        status = upgrade(engine)
    except OperationalError as exc:
        _fail([_start_problem(exc)], EXIT_FAILURE)
    finally:
        engine.dispose()
    click.echo(f"database schema at revision {', '.join(status.current)}")


@main.command()
@CONFIG_OPTION
@click.option("--repair", is_flag=True, help="Remove rows that cannot be served; quarantine files.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds: newer files may be writes in progress of a running server and are not judged.",
)
def fsck(config_path: Path | None, repair: bool, as_json: bool, min_age: float) -> None:
    """Check that index rows and instance files agree (existence, size, SHA-256).

    Exit status 0 when clean (or, with --repair, all repaired), 1 when problems remain, 2 for
    a configuration error. Safe while the server runs; --repair never deletes a file: files
    without rows and damaged files move to <storage root>/.quarantine/<time>/.
    """
    from pacsd.fsck import FsckUnavailable, run_fsck

    settings, _ = _settings(config_path)
    try:
        code = run_fsck(settings, repair, as_json, min_age)
    except FsckUnavailable as exc:
        _fail([str(exc)], exc.exit_code)
    sys.exit(code)


@main.group()
def worklist() -> None:
    """Manage the Modality Worklist: the steps modalities fetch with a worklist C-FIND."""


@contextmanager
def _index(config_path: Path | None) -> Iterator[IndexDatabase]:
    """The configured index database, its schema created or checked as at start-up."""
    from pacsd.index.database import IndexDatabase, create_index_engine
    from pacsd.index.schema import SchemaOutOfDate, ensure_schema

    settings, _ = _settings(config_path)
    database = IndexDatabase(create_index_engine(settings.database.url, pool_size=1))
    try:
        ensure_schema(database.engine)
        yield database
    except (OperationalError, SchemaOutOfDate) as exc:
        _fail([_start_problem(exc)], EXIT_FAILURE)
    finally:
        database.dispose()


@worklist.command("add")
@CONFIG_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
def worklist_add(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Add the items in FILES (DICOM files, or DICOM JSON: an object or an array).

    An item with several Scheduled Procedure Steps becomes one worklist item per step. Nothing
    is added unless every item of every file is valid.
    """
    from pacsd.dicom.worklist_item import WorklistItemError, entries_of, read_items
    from pacsd.index.worklist import add_entries

    try:
        entries = [
            entry for path in files for item in read_items(path) for entry in entries_of(item)
        ]
    except WorklistItemError as exc:
        _fail([str(exc)], EXIT_FAILURE)
    with _index(config_path) as database:
        try:
            ids = add_entries(database, entries)
        except WorklistItemError as exc:
            _fail([str(exc)], EXIT_FAILURE)
    for item_id, entry in zip(ids, entries, strict=True):
        generated = " (StudyInstanceUID generated)" if entry.generated_study_uid else ""
        click.echo(
            f"added {item_id}: {entry.start_date} {entry.start_time} "
            f"{entry.scheduled_station_ae_title} {entry.modality} {entry.patient_id} "
            f"accession {entry.accession_number or '-'}{generated}"
        )


@worklist.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="DICOM JSON items, an array.")
def worklist_list(config_path: Path | None, as_json: bool) -> None:
    """The worklist items, by scheduled start."""
    from pacsd.index.worklist import list_items

    with _index(config_path) as database:
        items = list_items(database)
    if as_json:
        click.echo(json.dumps([item.document for item in items], indent=2))
        return
    columns = ("ID", "DATE", "TIME", "STATION", "MOD", "PATIENT ID", "NAME", "ACCESSION", "STEP")
    rows = [columns] + [
        (
            str(item.pk),
            item.start_date,
            item.start_time,
            item.scheduled_station_ae_title,
            item.modality,
            item.patient_id,
            item.patient_name,
            item.accession_number,
            item.scheduled_procedure_step_id,
        )
        for item in items
    ]
    _print_table(rows)


@worklist.command("remove")
@CONFIG_OPTION
@click.argument("ids", nargs=-1, required=True, type=int)
def worklist_remove(config_path: Path | None, ids: tuple[int, ...]) -> None:
    """Remove the items with these IDs (as `pacsd worklist list` shows them)."""
    from pacsd.index.worklist import remove_items

    with _index(config_path) as database:
        removed = set(remove_items(database, ids))
    for item_id in ids:
        click.echo(f"removed {item_id}" if item_id in removed else f"no item {item_id}")
    if len(removed) < len(set(ids)):
        sys.exit(EXIT_FAILURE)


@main.group()
def mpps() -> None:
    """Performed procedure steps the modalities reported (MPPS)."""


@mpps.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step, an array.")
def mpps_list(config_path: Path | None, as_json: bool) -> None:
    """Steps, newest first: status, and how many of their series and instances arrived."""
    from dataclasses import asdict

    from pacsd.index.mpps import list_steps

    with _index(config_path) as database:
        steps = list_steps(database)
    if as_json:
        click.echo(json.dumps([asdict(step) for step in steps], indent=2))
        return
    columns = ("START", "STATUS", "STATION", "MOD", "PATIENT ID", "ACCESSION", "SERIES", "IMAGES")
    rows = [columns] + [
        (
            step.start,
            step.status,
            step.station,
            step.modality,
            step.patient_id,
            step.accession_number,
            f"{step.series_arrived}/{step.series_reported}",
            f"{step.instances_stored}/{step.instances_reported}",
        )
        for step in steps
    ]
    _print_table(rows)


@main.group("print")
def print_group() -> None:
    """Print jobs of the Print Management SCP: films kept as PNG and PDF files."""


@print_group.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="The job records, an array.")
def print_list(config_path: Path | None, as_json: bool) -> None:
    """Film sessions that printed, newest first: who, how many films, copies, medium, where."""
    from pacsd.dicom.print_jobs import print_folder, read_jobs

    settings, _ = _settings(config_path)
    jobs = list(read_jobs(print_folder(settings.print.folder, settings.storage.root)))
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    columns = ("PRINTED", "CALLING AE", "FILMS", "COPIES", "MEDIUM", "FORMAT", "SIZE", "LABEL")
    rows = [(*columns, "FOLDER")]
    for job in jobs:
        films = job.get("films") or []
        session = job.get("session") or {}
        rows.append(
            (
                str(job.get("updated", "")),
                str(job.get("calling_ae_title", "")),
                str(len(films)),
                str(session.get("number_of_copies", "")),
                str(session.get("medium_type", "")),
                ",".join(dict.fromkeys(str(film.get("image_display_format")) for film in films)),
                ",".join(dict.fromkeys(str(film.get("film_size_id")) for film in films)),
                str(session.get("film_session_label", "")),
                str(job.get("folder", "")),
            )
        )
    _print_table(rows)


@main.group()
def ups() -> None:
    """Unified Procedure Step workitems and the event reports waiting for their subscribers."""


@ups.command("list")
@CONFIG_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object: workitems, pending reports."
)
def ups_list(config_path: Path | None, as_json: bool) -> None:
    """Workitems by scheduled start (state, performer, subscribers), then the reports waiting
    for delivery per AE (how many, next attempt, last error)."""
    from dataclasses import asdict

    from pacsd.index.ups import list_queues, list_workitems

    with _index(config_path) as database:
        workitems, queues = list_workitems(database), list_queues(database)
    if as_json:
        document = {
            "workitems": [asdict(item) for item in workitems],
            "pending_reports": [asdict(queue) for queue in queues],
        }
        click.echo(json.dumps(document, indent=2))
        return
    columns = ("START", "STATE", "PRIORITY", "LABEL", "PATIENT ID", "PERFORMER", "SUBSCRIBERS")
    _print_table(
        [columns]
        + [
            (
                item.start,
                item.state,
                item.priority,
                item.procedure_step_label,
                item.patient_id,
                item.performer,
                ", ".join(item.subscribers),
            )
            for item in workitems
        ]
    )
    if queues:
        click.echo("")
        header = ("PENDING FOR", "REPORTS", "OLDEST", "NEXT ATTEMPT", "ATTEMPTS", "LAST ERROR")
        _print_table(
            [header]
            + [
                (
                    q.ae_title,
                    str(q.reports),
                    q.oldest,
                    q.next_attempt,
                    str(q.attempts),
                    q.last_error,
                )
                for q in queues
            ]
        )


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Server address (default: the configured bind host).")
@click.option("--port", type=int, default=None, help="Server port (default: the configured port).")
@click.option("--aet", default="PACSD-ECHO", show_default=True, help="Calling AE title.")
@click.option("--called-aet", default=None, help="Called AE title (default: configured AE).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
def echo(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    aet: str,
    called_aet: str | None,
    timeout: float,
) -> None:
    """Send a C-ECHO (exit 0 when it succeeds): for health checks and people."""
    from pacsd.echo import send_echo

    settings, _ = _settings(config_path)
    target_host = host or _reachable(settings.network.host)
    target_port = port or settings.network.port
    called = called_aet or settings.ae_title
    started = time.perf_counter()
    status, problem = send_echo(target_host, target_port, aet, called, timeout)
    elapsed_ms = (time.perf_counter() - started) * 1000
    where = f"{called}@{target_host}:{target_port}"
    if status == 0x0000:
        click.echo(f"C-ECHO {where}: success (0x0000) in {elapsed_ms:.1f} ms")
        return
    shown = f"0x{status:04X}" if status is not None else "no response"
    _fail([f"C-ECHO {where}: {problem or 'failed'} ({shown})"], EXIT_FAILURE)


def _reachable(bind_host: str) -> str:
    """Where to reach a server bound to `bind_host` from this machine."""
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        return bind_host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return bind_host


@main.command()
@CONFIG_OPTION
@click.option("--url", default=None, help="Status URL (default: from the status settings).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON as received.")
def associations(config_path: Path | None, url: str | None, timeout: float, as_json: bool) -> None:
    """List the open associations of a running server (its status interface)."""
    from pacsd.status_client import StatusUnavailable, check_url, fetch_status, format_status

    if url is not None:
        try:
            check_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
    target = url or _status_url(_settings(config_path)[0])
    try:
        document = fetch_status(target, timeout)
    except StatusUnavailable as exc:
        _fail([str(exc)], EXIT_FAILURE)
    if as_json:
        click.echo(document.text.rstrip("\n"))
        return
    click.echo("\n".join(format_status(document.content)))


def _status_url(settings: Settings) -> str:
    """The /associations URL of the configured status interface (exit 1 if there is none)."""
    status = settings.status
    if not status.enabled:
        _fail(["the status interface is disabled (status.enabled: false)"], EXIT_FAILURE)
    if status.port == 0:
        _fail(["status.port is 0 (chosen at start-up): pass --url"], EXIT_FAILURE)
    from pacsd.http.status import associations_url

    return associations_url(_reachable(status.host), status.port)


@main.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from stdin.")
def hash_password(from_stdin: bool) -> None:
    """Print an argon2id hash of a password for identity.users[].password_hash.

    The password is asked for twice without echo, or read as the first line of stdin with
    --stdin (for scripts); it is never printed or logged.
    """
    from pacsd.policy.identity import hash_password as argon2id_hash

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if not password:
        _fail(["the password is empty"], EXIT_FAILURE)
    click.echo(argon2id_hash(password))
