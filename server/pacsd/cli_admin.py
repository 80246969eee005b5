"""`pacsd studies`, `pacsd delete`, `pacsd stats`, `pacsd retention run`: the archive's
administration from the command line, on the same functions as the REST admin API
(pacsd.admin). Beside a running server: the index and storage root are shared with it
(pacsd.admin.delete says why a deletion is safe while it stores).

Registered on the `pacsd` group by cli.py (which is over the size line of STYLE.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pacsd.cli import (
    EXIT_FAILURE,
    _fail,
    _index,
    _os_user,
    _print_table,
    _settings,
)

# cli.py's --config option, made again here: this module is imported while cli.py loads.
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Configuration file (default: $PACSD_CONFIG, else the embedded default).",
)


def register(group: click.Group) -> None:
    """Add the admin commands to `group`."""
    for command in (studies, delete, stats, retention):
        group.add_command(command)


def _log_to_stderr() -> None:
    """pacsd's log lines (a deletion's, a retention run's) on stderr, off the --json output."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def human_size(size: int) -> str:
    """Bytes for people (decimal units, as storage.min_free_space reads them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


@click.command()
@CONFIG_OPTION
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, help="Skip this many matches.")
@click.option("--json", "as_json", is_flag=True, help="The page as one JSON object.")
@click.argument("keys", nargs=-1)
def studies(
    config_path: Path | None, limit: int, offset: int, as_json: bool, keys: tuple[str, ...]
) -> None:
    """Studies matching KEYS, C-FIND matching keys as KEYWORD=VALUE: PatientName=DOE*,
    StudyDate=20240101-20241231, ModalitiesInStudy=CT, StudyInstanceUID=1.2.3\\\\1.2.4."""
    from pacsd.admin.browse import SearchError, parse_keys, search
    from pacsd.dicom.matching import MatchOptions
    from pacsd.dicom.qr_models import Level

    settings, _ = _settings(config_path)
    pairs = []
    for key in keys:
        keyword, equals, value = key.partition("=")
        if not equals or not keyword:
            raise click.BadParameter(f"{key!r}: write KEYWORD=VALUE", param_hint="KEYS")
        pairs.append((keyword, value))
    options = MatchOptions(settings.query.person_name_case_insensitive)
    try:
        matching = parse_keys(pairs, Level.STUDY, options)
    except SearchError as exc:
        raise click.BadParameter(str(exc), param_hint="KEYS") from None
    with _index(config_path) as database:
        page = search(database, Level.STUDY, matching, limit, offset)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    _print_studies(page["items"])
    if page["more"]:
        click.echo(f"pacsd: more studies match: --offset {offset + limit}", err=True)


def _print_studies(items: list[dict[str, Any]]) -> None:
    columns = ("STUDY INSTANCE UID", "DATE", "PATIENT ID", "PATIENT NAME", "ACCESSION")
    rows = [(*columns, "MODALITIES", "SERIES", "INSTANCES", "SIZE", "LAST RECEIVED")]
    for item in items:
        rows.append(
            (
                item["StudyInstanceUID"],
                item["StudyDate"],
                item["PatientID"],
                item["PatientName"],
                item["AccessionNumber"],
                ",".join(item["ModalitiesInStudy"]),
                str(item["NumberOfStudyRelatedSeries"]),
                str(item["NumberOfStudyRelatedInstances"]),
                human_size(item.get("bytes", 0)),
                item.get("last_received", ""),
            )
        )
    _print_table(rows)


@click.command()
@CONFIG_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as one JSON object.")
@click.argument("scope", type=click.Choice(["study", "series", "instance"]))
@click.argument("uids", nargs=-1, required=True)
def delete(
    config_path: Path | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    scope: str,
    uids: tuple[str, ...],
) -> None:
    """Delete studies, series or instances by UID: index rows first, files after, each study
    audited (Study Deleted). Safe beside a running server. Asks on a terminal unless --yes;
    exit 1 when a UID is not in the index."""
    from pacsd import audit
    from pacsd.admin.delete import Scope, delete_entities, plan
    from pacsd.storage.base import open_store

    _log_to_stderr()
    settings, _ = _settings(config_path)
    files = open_store(settings.storage)
    with _index(config_path) as database:
        planned = plan(database, Scope(scope), uids)
        if not as_json or not (yes or dry_run):
            _describe(planned, "would delete" if dry_run or not yes else "deleting")
        if dry_run or not planned.studies:
            if as_json:
                click.echo(json.dumps(planned.as_dict(), indent=2))
            sys.exit(EXIT_FAILURE if planned.missing else 0)
        if not yes:
            if not sys.stdin.isatty():
                _fail(["not on a terminal: pass --yes to delete"], EXIT_FAILURE)
            click.confirm("Delete them?", abort=True, err=True)
        user = _os_user()
        audit.configure(settings)
        try:
            done = delete_entities(
                database, files, Scope(scope), uids, f"deleted by {user} via cli", user
            )
        finally:
            audit.shutdown()
    if as_json:
        click.echo(json.dumps(done.as_dict(), indent=2))
    else:
        click.echo(f"deleted {done.instances} instances ({human_size(done.bytes)})")
        for path in done.files_left:
            click.echo(f"file not removed (pacsd fsck will find it): {path}", err=True)
    sys.exit(EXIT_FAILURE if done.missing else 0)


def _describe(deletion: Any, verb: str) -> None:
    """What a deletion covers, one line per study, on stderr."""
    for study_uid, loss in deletion.studies.items():
        click.echo(
            f"{verb}: study {study_uid}: {loss.instances} instances ({human_size(loss.bytes)})",
            err=True,
        )
    for uid in deletion.missing:
        click.echo(f"not in the index: {deletion.scope} {uid}", err=True)
    click.echo(
        f"{verb}: {deletion.instances} instances of {len(deletion.studies)} studies, "
        f"{human_size(deletion.bytes)}",
        err=True,
    )


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def stats(config_path: Path | None, as_json: bool) -> None:
    """What the archive holds: patients, studies, series, instances, bytes, per modality and
    per SOP class, and the storage root's free space."""
    from pacsd.admin.stats import statistics
    from pacsd.storage.base import open_store

    settings, _ = _settings(config_path)
    files = open_store(settings.storage)
    with _index(config_path) as database:
        document = statistics(database, files)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    _print_stats(document)


def _print_stats(document: dict[str, Any]) -> None:
    counts = ("patients", "studies", "series", "instances")
    click.echo("  ".join(f"{document[name]} {name}" for name in counts))
    last = document["last_received"] or "-"
    click.echo(f"{human_size(document['bytes'])} in files; last received {last}")
    storage = document["storage"]
    if "free_bytes" in storage:
        free, total = storage["free_bytes"], storage["total_bytes"]
        click.echo(
            f"storage root {storage['root']}: {human_size(free)} free of {human_size(total)} "
            f"(minimum {human_size(storage['min_free_bytes'])})"
        )
    rows = [("MODALITY", "SERIES", "INSTANCES", "SIZE")]
    for modality, entry in document["modalities"].items():
        sizes = (str(entry["series"]), str(entry["instances"]), human_size(entry["bytes"]))
        rows.append((modality or "-", *sizes))
    click.echo()
    _print_table(rows)
    classes = [("SOP CLASS", "INSTANCES", "SIZE")]
    for uid, entry in document["sop_classes"].items():
        counted = (str(entry["instances"]), human_size(entry["bytes"]))
        classes.append((entry["keyword"] or uid, *counted))
    click.echo()
    _print_table(classes)


@click.group()
def retention() -> None:
    """Delete the studies the `retention` rules no longer keep."""


@retention.command("run")
@CONFIG_OPTION
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="The run's report as one JSON object.")
def retention_run(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Apply the retention rules once (retention.max_age_days, retention.min_free_space,
    whether or not the server runs them: retention.enabled); each study deleted is audited."""
    from pacsd import audit
    from pacsd.admin.retention import has_rules, run
    from pacsd.cli import EXIT_CONFIG
    from pacsd.index.cluster import ArchiveBusy
    from pacsd.storage.base import open_store

    _log_to_stderr()
    settings, _ = _settings(config_path)
    rules = settings.retention
    if not has_rules(rules):
        _fail(["no retention rules: set retention.max_age_days or retention.min_free_space"],
              EXIT_CONFIG)  # fmt: skip
    files = open_store(settings.storage)
    dry_run = dry_run or rules.dry_run
    with _index(config_path) as database:
        audit.configure(settings)
        try:
            report = run(database, files, rules, dry_run)
        except ArchiveBusy:
            _fail(["retention is running elsewhere (another node or command); try later"],
                  EXIT_FAILURE)  # fmt: skip
        finally:
            audit.shutdown()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    rows = [("STUDY INSTANCE UID", "LAST RECEIVED", "INSTANCES", "SIZE", "REASON")]
    for study in report["studies"]:
        if dry_run or study["deleted"]:
            rows.append(
                (
                    study["StudyInstanceUID"],
                    study["last_received"],
                    str(study["instances"]),
                    human_size(study["bytes"]),
                    study["reason"],
                )
            )
    if len(rows) > 1:
        _print_table(rows)
    count = len(rows) - 1
    size = sum(s["bytes"] for s in report["studies"] if dry_run or s["deleted"])
    click.echo(f"{verb} {count} studies ({human_size(size)})", err=True)
