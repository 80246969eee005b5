"""Retention (settings `retention`): the age rule and the free-space watermark, by
`pacsd retention run` beside a running pacsd and by the server's own periodic run. Ages are
written into the real index (a study's instances made to look received 40 days ago), so no
test waits for days; the watermark is set above the disk's free space, so it is always under.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.admin_archive import (
    found_study_uids,
    set_received,
    store,
    study_deleted,
    study_files,
)
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess, pacsd_command
from tests.inspect_archive import assert_index_matches_files

WAIT_S = 20.0


def run(server: PacsdProcess, *args: str) -> tuple[int, str, str]:
    """`pacsd retention run <args>` on the server's configuration."""
    result = pacsd_command("retention", "run", *args, "--config", str(server.config_path))
    return result.returncode, result.stdout, result.stderr


def three_studies(server: PacsdProcess, folder: Path, url: str) -> list[str]:
    """Three stored studies, received 50, 40 and 1 day(s) ago (oldest first)."""
    uids = []
    for number, days in enumerate((50, 40, 1)):
        uid, files = study_files(folder / str(number), 2, f"PAT-{number}")
        store(server, files)
        set_received(url, uid, datetime.now(UTC) - timedelta(days=days))
        uids.append(uid)
    return uids


def database_of(server: PacsdProcess) -> str:
    """The SQLite URL of a server made by base_config."""
    return f"sqlite:///{server.config_path.parent / 'index.sqlite'}"


def test_age_rule_dry_run_then_run(pacsd_server: ServerFactory, tmp_path: Path) -> None:
    """max_age_days 30: the dry run lists the two studies older than 30 days and deletes
    nothing; the run deletes exactly them (index, files, C-FIND), each audited "retention:
    older than 30 days"; no rules at all is a configuration error."""
    plain = pacsd_server()
    assert run(plain)[0] == 2
    server = pacsd_server(retention={"max_age_days": 30})
    url = database_of(server)
    old, older, young = three_studies(server, tmp_path, url)

    code, out, err = run(server, "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["StudyInstanceUID"] for s in report["studies"]] == [old, older]
    assert report["deleted_studies"] == 0
    assert found_study_uids(server) == {old, older, young}

    code, out, err = run(server)
    assert code == 0, err
    assert old in out
    assert "deleted 2 studies" in err
    assert found_study_uids(server) == {young}
    assert "retention: older than 30 days" in study_deleted(server, old)[0]
    rows = assert_index_matches_files(url, server.storage_root)
    assert {row["study_instance_uid"] for row in rows} == {young}


def test_watermark_deletes_the_oldest_first_within_the_bound(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """min_free_space above what the disk has: the oldest studies go first, at most
    max_studies_per_run of them, audited "retention: free space under ..."."""
    server = pacsd_server(retention={"min_free_space": "1PB", "max_studies_per_run": 2})
    url = database_of(server)
    oldest, middle, newest = three_studies(server, tmp_path, url)
    code, out, err = run(server, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["StudyInstanceUID"] for s in report["studies"] if s["deleted"]] == [oldest, middle]
    assert found_study_uids(server) == {newest}
    assert "retention: free space under" in study_deleted(server, middle)[0]


def test_server_runs_the_rules_periodically(pacsd_server: ServerFactory, tmp_path: Path) -> None:
    """retention.enabled: the running server deletes a study once it is older than
    max_age_days, by itself, logging each run; a study received now stays."""
    server = pacsd_server(retention={"enabled": True, "max_age_days": 30, "interval": 0.5})
    url = database_of(server)
    aged, files = study_files(tmp_path / "aged", 2, "PAT-A")
    young, young_files = study_files(tmp_path / "young", 2, "PAT-B")
    store(server, files + young_files)
    set_received(url, aged, datetime.now(UTC) - timedelta(days=31))
    deadline = time.monotonic() + WAIT_S
    while aged in found_study_uids(server):
        assert time.monotonic() < deadline, "the server's retention never deleted the study"
        time.sleep(0.2)
    assert found_study_uids(server) == {young}
    assert server.events("retention run")
    assert "retention: older than 30 days" in study_deleted(server, aged)[0]
