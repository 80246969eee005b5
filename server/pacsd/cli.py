"""The `pacsd` command. Exit codes: 0 ok, 2 configuration error, 1 anything else."""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml
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
@click.pass_context
def main(ctx: click.Context) -> None:
    """pacsd: a PACS-style DICOM server daemon."""
    if ctx.invoked_subcommand != "serve":  # `serve` turns it on once it listens (daemon.py)
        gc.enable()


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
    network = settings.network
    listeners = [f"port {network.port}"] if network.listen_plain else []
    if network.tls.enabled:
        listeners.append(f"TLS port {network.tls.port}")
    click.echo(f"{file}: ok (AE {settings.ae_title}, {', '.join(listeners)})")


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


@main.command()
@CONFIG_OPTION
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "html"]),
    default="markdown",
    show_default=True,
    help="Markdown, or one self-contained HTML page.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to FILE (default: standard output).",
)
def conformance(config_path: Path | None, output_format: str, output: Path | None) -> None:
    """Print the DICOM Conformance Statement (PS3.2) of the configuration."""
    from pacsd.conformance import build, render
    from pacsd.runtime import compile_policy

    settings, path = _settings(config_path)
    try:
        policy = compile_policy(settings)
    except ValueError as exc:
        _fail([f"{path or 'embedded default'}: {exc}"], EXIT_CONFIG)
    text = render(build(settings, policy, str(path or "")), output_format)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail([f"cannot write {output}: {exc.strerror or exc}"], EXIT_FAILURE)


@config.command("show")
@CONFIG_OPTION
def config_show(config_path: Path | None) -> None:
    """Print the effective configuration as YAML, secrets masked."""
    from pacsd.settings_paths import paths_note

    settings, path = _settings(config_path)
    click.echo("\n".join(paths_note(path)))
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret replaced by *** (settings_secrets.py)."""
    from pacsd.settings_secrets import mask_document

    return mask_document(settings.model_dump(mode="json"))


def _announce(settings: Settings, path: Path | None) -> None:
    """Say on stderr which index database and storage root an admin command uses."""
    from pacsd.settings_paths import where_used

    click.echo(f"pacsd: {where_used(settings.database.url, settings.storage.root, path)}", err=True)


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
    # dicom/sop_classes.operations(), checked once the configuration (and with it the site
    # services of its `extensions`) is loaded; importing it would load pydicom for --help.
    default=None,
    help="echo, store, find, get, move, worklist, commit, mpps, print, ups, or a site "
    "service's site:NAME.",
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
    operation = options["operation"]
    if operation is not None and operation not in sop_classes.operations():
        known = ", ".join(sop_classes.operations())
        raise click.BadParameter(f"{operation!r} is not one of {known}", param_hint="--operation")
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

    settings, path = _settings(config_path)
    _announce(settings, path)
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

    settings, path = _settings(config_path)
    _announce(settings, path)
    try:
        code = run_fsck(settings, repair, as_json, min_age)
    except FsckUnavailable as exc:
        _fail([str(exc)], exc.exit_code)
    sys.exit(code)


@main.command("import")
@CONFIG_OPTION
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Files stored at once (default: min(4, CPU cores)).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Check every file and report; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--no-resume", is_flag=True, help="Import again files an earlier run finished.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def import_files(
    config_path: Path | None, jobs: int | None, dry_run: bool, as_json: bool, no_resume: bool,
    paths: tuple[Path, ...],
) -> None:  # fmt: skip
    """Store the DICOM files of PATHS (files, folders recursively, the files DICOMDIRs list)
    as a C-STORE would: same checks, duplicate policy and audit trail. Safe beside a running
    server; run again after an interruption, it skips the files already done.

    Exit status 0 when no file was refused, 1 when some were (the summary names each with its
    reason), 2 for a usage or configuration error, 130 when interrupted.
    """
    import os

    from pacsd import audit
    from pacsd.importer import (
        BarProgress,
        ImportBusy,
        ImportOptions,
        PlainProgress,
        open_dry_index,
        run_import,
        summary_lines,
    )

    jobs = jobs or min(4, os.cpu_count() or 1)
    options = ImportOptions(jobs, dry_run, resume=not no_resume)
    bar = sys.stderr.isatty()  # the bar and the lines go to stderr: stdout has the summary
    progress = BarProgress() if bar else PlainProgress(lambda line: click.echo(line, err=True))
    settings, path = _settings(config_path)
    with ExitStack() as stack:
        if dry_run:
            _announce(settings, path)
            database = open_dry_index(settings)
            if database is not None:
                stack.callback(database.dispose)
        else:
            database = stack.enter_context(_index(config_path))
            audit.configure(settings)
            stack.callback(audit.shutdown)
        try:
            with progress:
                report, studies = run_import(paths, settings, database, options, progress)
        except ImportBusy as exc:
            _fail([str(exc)], EXIT_FAILURE)
        audit.data_imported(paths, _os_user(), studies)
    summary = summary_lines(report)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(summary))
    sys.exit(130 if report.interrupted else EXIT_FAILURE if report.refused else EXIT_OK)


@main.group()
def worklist() -> None:
    """Manage the Modality Worklist: the steps modalities fetch with a worklist C-FIND."""


@contextmanager
def _index(config_path: Path | None) -> Iterator[IndexDatabase]:
    """The configured index database, its schema created or checked as at start-up."""
    from pacsd.index.database import IndexDatabase, create_index_engine
    from pacsd.index.schema import SchemaOutOfDate, ensure_schema

    settings, path = _settings(config_path)
    _announce(settings, path)
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
    """Add the items in FILES (DICOM files; DICOM JSON or keyword JSON: an object or an array;
    examples/worklist-item.json).

    An item with several Scheduled Procedure Steps becomes one worklist item per step. Nothing
    is added unless every item of every file is valid.
    """
    from pacsd.dicom.worklist_item import WorklistEntry, WorklistItemError, entries_of
    from pacsd.index.worklist import add_entries

    entries: list[WorklistEntry] = []
    for path in files:
        items = _worklist_items(path)
        try:
            entries += [entry for item in items for entry in entries_of(item)]
        except WorklistItemError as exc:
            _fail([f"{path}: {exc} (see examples/worklist-item.json)"], EXIT_FAILURE)
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


def _worklist_items(path: Path) -> list[Any]:
    """The items of one file, or exit 1 saying what the file should look like."""
    from pacsd.dicom.worklist_item import WorklistItemError, read_items

    try:
        return read_items(path)
    except WorklistItemError as exc:
        _fail([str(exc)], EXIT_FAILURE)


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

    settings, path = _settings(config_path)
    _announce(settings, path)
    folder = print_folder(settings.print.folder, settings.storage.root)
    click.echo(f"pacsd: print folder {folder.absolute()}", err=True)
    jobs = list(read_jobs(folder))
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


@main.group()
def commitment() -> None:
    """Storage Commitment reports waiting for delivery to their requesters."""


@commitment.command("list")
@CONFIG_OPTION
@click.option("--all", "everything", is_flag=True, help="Also delivered, given up, cancelled.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request, an array.")
def commitment_list(config_path: Path | None, everything: bool, as_json: bool) -> None:
    """Requests whose N-EVENT-REPORT is waiting: ID, requester, attempts, last error."""
    from dataclasses import asdict

    from pacsd.index.commitment import list_requests

    with _index(config_path) as database:
        requests = list_requests(database, everything)
    if as_json:
        click.echo(json.dumps([asdict(request) for request in requests], indent=2))
        return
    columns = ("ID", "REQUESTER", "STATE", "REQUESTED", "INSTANCES", "ATTEMPTS", "NEXT ATTEMPT")
    rows = [(*columns, "TRANSACTION UID", "LAST ERROR")]
    for request in requests:
        who = (str(request.id), request.calling_ae_title, request.state, request.requested_at)
        counts = (str(request.instances), str(request.attempts), request.next_attempt_at)
        rows.append((*who, *counts, request.transaction_uid, request.last_error))
    _print_table(rows)


@commitment.command("cancel")
@CONFIG_OPTION
@click.option("--all", "everything", is_flag=True, help="Every waiting report.")
@click.argument("ids", nargs=-1)
def commitment_cancel(config_path: Path | None, everything: bool, ids: tuple[str, ...]) -> None:
    """Drop waiting reports by ID or Transaction UID (as `pacsd commitment list` shows them),
    or --all; each is logged and audited. Exit 1 when an ID named is not waiting."""
    from pacsd import audit
    from pacsd.index.commitment import CANCELLED, end_requests

    if everything == bool(ids):
        raise click.UsageError("give the IDs of the reports to cancel, or --all")
    wanted = None if everything else [int(i) if i.isdigit() else i for i in ids]
    settings, _ = _settings(config_path)
    with _index(config_path) as database:
        ended = end_requests(database, wanted, CANCELLED, "cancelled by pacsd commitment cancel")
    audit.configure(settings)
    try:
        for request in ended:
            transaction = (request.transaction_uid, len(request.references))
            audit.commitment_report_ended(
                request.calling_ae_title, transaction, "cancelled", user=_os_user()
            )
            click.echo(
                f"cancelled {request.pk}: {request.transaction_uid} to "
                f"{request.calling_ae_title}, {len(request.references)} instances"
            )
    finally:
        audit.shutdown()
    found = {str(request.pk) for request in ended} | {request.transaction_uid for request in ended}
    missing = [item for item in ids if item not in found]
    for item in missing:
        click.echo(f"no waiting report {item}")
    if missing:
        sys.exit(EXIT_FAILURE)


def _os_user() -> str:
    """Who runs this command, for the audit trail."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


FILE_OPTION = click.Path(path_type=Path, dir_okay=False)


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Server address (default: the configured bind host).")
@click.option("--port", type=int, default=None, help="Server port (default: the configured one).")
@click.option("--aet", default="PACSD-ECHO", show_default=True, help="Calling AE title.")
@click.option("--called-aet", default=None, help="Called AE title (default: configured AE).")
@click.option("--peer", default=None, help="An AE title of `peers`: its host, port, AE and TLS.")
@click.option(
    "--tls/--no-tls",
    "use_tls",
    default=None,
    help="DICOM TLS (default: when the configuration has no plain listener, or for a peer "
    "marked tls).",
)
@click.option("--cert", type=FILE_OPTION, default=None, help="Client certificate (PEM).")
@click.option("--key", type=FILE_OPTION, default=None, help="Its private key (PEM).")
@click.option("--ca", type=FILE_OPTION, default=None, help="CA file verifying the server.")
@click.option("--tls-server-name", default=None, help="Name the server's certificate must carry.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
def echo(config_path: Path | None, **options: Any) -> None:
    """Send a C-ECHO (exit 0 when it succeeds): for health checks and people.

    Without options: to this configuration's server, over TLS (with its own certificate
    files) when it has no plain listener. With --peer or --host/--port/--called-aet: to any
    DICOM node.
    """
    from pacsd.echo import send_echo

    settings, _ = _settings(config_path)
    target = _echo_target(settings, options)
    host, port, called, tls = target
    started = time.perf_counter()
    status, problem = send_echo(host, port, options["aet"], called, options["timeout"], tls)
    elapsed_ms = (time.perf_counter() - started) * 1000
    where = f"{called}@{host}:{port}{' over TLS' if tls is not None else ''}"
    if status == 0x0000:
        click.echo(f"C-ECHO {where}: success (0x0000) in {elapsed_ms:.1f} ms")
        return
    shown = f"0x{status:04X}" if status is not None else "no response"
    _fail([f"C-ECHO {where}: {problem or 'failed'} ({shown})"], EXIT_FAILURE)


def _echo_target(settings: Settings, options: dict[str, Any]) -> tuple[str, int, str, Any]:
    """(host, port, called AE title, TLS arguments or None) of `pacsd echo`."""
    from pacsd.echo import echo_tls
    from pacsd.engine.tls import TlsSetupError

    network = settings.network
    if (options["cert"] is None) != (options["key"] is None):
        raise click.BadParameter("give both --cert and --key", param_hint="--cert/--key")
    server_name = options["tls_server_name"]
    if options["peer"] is not None:
        peer = next((p for p in settings.peers if p.ae_title == options["peer"]), None)
        if peer is None:
            _fail([f"--peer: {options['peer']} is not in the AE table (peers)"], EXIT_CONFIG)
        use_tls = peer.tls if options["use_tls"] is None else options["use_tls"]
        host, port, called = peer.host, peer.port, peer.ae_title
        server_name = server_name or peer.tls_server_name or peer.host
    else:
        port_given = options["port"]
        use_tls = options["use_tls"]
        if use_tls is None:  # what the configuration enables: plain first, else TLS
            on_tls_port = network.tls.enabled and port_given == network.tls.port
            use_tls = not network.listen_plain or on_tls_port
        host = _reachable(network.host)
        port = network.tls.port if use_tls else network.port
        called = settings.ae_title
    host = options["host"] or host
    port = options["port"] or port
    called = options["called_aet"] or called
    if not use_tls:
        return host, port, called, None
    files = {"certificate_file": options["cert"], "key_file": options["key"]}
    try:
        tls = echo_tls(network.tls, host, server_name, {**files, "ca_file": options["ca"]})
    except TlsSetupError as exc:
        _fail([str(exc)], EXIT_CONFIG)
    return host, port, called, tls


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
@click.option(
    "--url",
    default=None,
    help="The HTTP interface, e.g. http://127.0.0.1:11113 (default: the http settings).",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON as received.")
@click.option(
    "--user",
    default=None,
    help="Log in as this user of identity.users (HTTP basic); the password comes from "
    "PACSD_HTTP_PASSWORD or a prompt.",
)
@click.option(
    "--all-nodes",
    is_flag=True,
    help="Cluster mode: ask every live node of `pacsd nodes` (their HTTP interfaces).",
)
def associations(
    config_path: Path | None,
    url: str | None,
    timeout: float,
    as_json: bool,
    user: str | None,
    all_nodes: bool,
) -> None:
    """List the open associations of a running server (GET /associations of its HTTP
    interface; over HTTPS, trusting network.tls.ca_file, when http.tls is set), or with
    --all-nodes of every live node of the cluster (exit 1 when one does not answer)."""
    from pacsd.status_client import (
        StatusUnavailable,
        associations_url,
        check_url,
        fetch_status,
        format_status,
    )

    if url is not None and all_nodes:
        raise click.UsageError("--all-nodes finds the nodes' URLs itself: leave out --url")
    if url is not None:
        try:
            check_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
    settings = _settings(config_path)[0] if url is None or config_path is not None else None
    target = ""
    if not all_nodes:
        target = associations_url(url) if url is not None else _status_url(settings)
    ca_file = settings.network.tls.ca_file if settings is not None else None
    credentials = None
    if user is not None:
        password = os.environ.get("PACSD_HTTP_PASSWORD") or str(
            click.prompt(f"password of {user}", hide_input=True, err=True)
        )
        credentials = (user, password)
    if all_nodes:
        _all_nodes_associations(config_path, (timeout, ca_file, credentials), as_json)
        return
    try:
        document = fetch_status(target, timeout, ca_file, credentials)
    except StatusUnavailable as exc:
        _fail([str(exc)], EXIT_FAILURE)
    if as_json:
        click.echo(document.text.rstrip("\n"))
        return
    click.echo("\n".join(format_status(document.content)))


def _all_nodes_associations(
    config_path: Path | None, fetching: tuple[float, Path | None, Any], as_json: bool
) -> None:
    """`pacsd associations --all-nodes`: every live node's list, one after the other."""
    from pacsd.index.cluster import list_nodes
    from pacsd.status_client import fetch_nodes, format_nodes

    with _index(config_path) as database:
        nodes = [node for node in list_nodes(database) if node.state == "live"]
    if not nodes:
        _fail(["no live cluster node (cluster.enabled off, or none running)"], EXIT_FAILURE)
    reachable = [(node.name, node.http_url) for node in nodes if node.http_url]
    answers = fetch_nodes(reachable, *fetching)
    if as_json:
        documents = [
            {"node": a.node, "url": a.url, "status": a.content, "error": a.error or None}
            for a in answers
        ]
        click.echo(json.dumps({"nodes": documents}, indent=2))
    else:
        click.echo("\n".join(format_nodes(answers)))
    silent = [node.name for node in nodes if not node.http_url]
    if silent:
        click.echo(f"pacsd: live nodes without an HTTP interface: {', '.join(silent)}", err=True)
    if silent or any(answer.content is None for answer in answers):
        sys.exit(EXIT_FAILURE)


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node, an array.")
def nodes(config_path: Path | None, as_json: bool) -> None:
    """The nodes of a cluster (cluster.enabled) as they registered in the index database:
    live, dead (no heartbeat for 3 intervals) or stopped; their addresses and pids, and their
    open associations as of their last heartbeat ("-": not known, the node keeps no metrics)."""
    from dataclasses import asdict

    from pacsd.index.cluster import list_nodes

    with _index(config_path) as database:
        listed = list_nodes(database)
    if as_json:
        click.echo(json.dumps([asdict(node) for node in listed], indent=2))
        return
    if not listed:
        click.echo("no cluster nodes registered (cluster.enabled is off on every node?)")
        return
    rows = [
        ("NODE", "STATE", "ASSOC", "PID", "STARTED", "LAST SEEN", "AGO", "DICOM", "HTTP", "VERSION")
    ]
    for node in listed:
        held = "-" if node.associations is None else str(node.associations)
        seen = (node.last_seen, f"{node.seconds_since_seen:g}s")
        where = (node.dicom_address, node.http_url or "-", node.version)
        rows.append((node.name, node.state, held, str(node.pid), node.started_at, *seen, *where))
    _print_table(rows)


def _status_url(settings: Settings | None) -> str:
    """The /associations URL of the configured HTTP interface (exit 1 if there is none)."""
    assert settings is not None, "no --url: the configuration names the interface"
    http = settings.http
    if not http.enabled:
        _fail(["the HTTP interface is disabled (http.enabled: false)"], EXIT_FAILURE)
    if http.port == 0:
        _fail(["http.port is 0 (chosen at start-up): pass --url"], EXIT_FAILURE)
    from pacsd.status_client import associations_url, http_url

    return associations_url(http_url(_reachable(http.host), http.port, http.tls))


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


# `pacsd studies | delete | stats | retention run` live in cli_admin.py (this file is over the
# size line of STYLE.md); imported last, as they use the helpers above.
from pacsd.cli_admin import register as _register_admin  # noqa: E402

_register_admin(main)
