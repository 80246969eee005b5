"""`pacsd studies`, `pacsd stats` and `pacsd delete` beside a running pacsd: the commands
read and change the server's own index and storage root (real processes, real files), say
which they used, and a deletion is audited and seen at once by the server's C-FIND."""

from __future__ import annotations

import json
from pathlib import Path

from tests.admin_archive import found_study_uids, store, study_deleted, study_files
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess, pacsd_command
from tests.inspect_archive import assert_index_matches_files


def pacsd(server: PacsdProcess, *args: str) -> tuple[int, str, str]:
    """Run `pacsd <args> --config <the server's file>`: (exit code, stdout, stderr)."""
    result = pacsd_command(*args, "--config", str(server.config_path))
    return result.returncode, result.stdout, result.stderr


def test_studies_stats_and_delete_beside_a_running_server(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """`studies` lists (table and JSON) and filters with C-FIND keys; `stats` counts; `delete
    --dry-run` and a delete without --yes off a terminal change nothing; `delete --yes`
    removes the study from the running server's C-FIND, index and disk, audited "via cli";
    an unknown UID exits 1; every command names the database and storage root it used."""
    server = pacsd_server()
    database_url = f"sqlite:///{server.config_path.parent / 'index.sqlite'}"
    ct, ct_files = study_files(tmp_path / "ct", 3, "PAT-1", "Doe^Jane", "CT", "20240315")
    mr, mr_files = study_files(tmp_path / "mr", 2, "PAT-2", "Roe^Rick", "MR", "20230601")
    store(server, ct_files + mr_files)

    code, out, err = pacsd(server, "studies")
    assert code == 0, err
    assert "STUDY INSTANCE UID" in out
    assert ct in out
    assert mr in out
    assert "database sqlite:///" in err
    assert "storage root" in err
    code, out, err = pacsd(server, "studies", "--json", "PatientName=Doe*", "ModalitiesInStudy=CT")
    assert code == 0, err
    [study] = json.loads(out)["items"]
    assert study["StudyInstanceUID"] == ct
    assert study["NumberOfStudyRelatedInstances"] == 3
    code, out, err = pacsd(server, "studies", "--json", "StudyDate=20230101-20231231")
    assert [item["StudyInstanceUID"] for item in json.loads(out)["items"]] == [mr]
    code, _out, err = pacsd(server, "studies", "Modality=CT")
    assert code == 2
    assert "ModalitiesInStudy" in err
    assert pacsd(server, "studies", "NotAKeyword=1")[0] == 2

    code, out, err = pacsd(server, "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["studies"], stats["instances"]) == (2, 5)
    assert set(stats["modalities"]) == {"CT", "MR"}
    code, out, _err = pacsd(server, "stats")
    assert "2 studies" in out
    assert "MODALITY" in out

    code, _out, err = pacsd(server, "delete", "study", ct, "--dry-run")
    assert code == 0, err
    assert "would delete: 3 instances of 1 studies" in err
    code, _out, err = pacsd(server, "delete", "study", ct)
    assert code == 1
    assert "--yes" in err
    assert found_study_uids(server) == {ct, mr}

    code, out, err = pacsd(server, "delete", "study", ct, "--yes")
    assert code == 0, err
    assert "deleted 3 instances" in out
    assert found_study_uids(server) == {mr}
    [message] = study_deleted(server, ct)
    assert "via cli" in message
    rows = assert_index_matches_files(database_url, server.storage_root)
    assert {row["study_instance_uid"] for row in rows} == {mr}
    code, _out, err = pacsd(server, "delete", "study", ct, "--yes")
    assert code == 1
    assert "not in the index" in err
    code, out, _err = pacsd(server, "delete", "series", "1.2.3", "--yes", "--json")
    assert code == 1
    assert json.loads(out)["missing"] == ["1.2.3"]
