"""The REST admin API of a real pacsd (/api): search, statistics, queues, associations and
deletion, on SQLite (and PostgreSQL when PACSD_TEST_DATABASE_URL is set). Studies arrive over
DICOM (pynetdicom, DCMTK's storescu); HTTP through urllib; what a deletion left is checked
with C-FIND, in the index and on disk, and in the audit trail.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests import datagen
from tests.admin_archive import (
    found_instance_uids,
    found_study_uids,
    http,
    store,
    study_deleted,
    study_files,
)
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess
from tests.inspect_archive import assert_index_matches_files, index_rows

DELETERS = [{"name": "this-host", "address": ["127.0.0.0/8"], "allow": ["read", "admin", "delete"]}]
STORESCU_TIMEOUT_S = 60
MAX_DELETES = 200


def get(server: PacsdProcess, path: str) -> tuple[int, Any]:
    """GET an /api path of `server`."""
    return http("GET", f"{server.http_url}{path}")


def two_studies(server: PacsdProcess, folder: Path) -> tuple[str, str]:
    """A CT study of Doe (3 instances, 2024-03-15) and an MR study of Roe (2, 2023-06-01)."""
    ct, ct_files = study_files(folder / "ct", 3, "PAT-1", "Doe^Jane", "CT", "20240315")
    mr, mr_files = study_files(folder / "mr", 2, "PAT-2", "Roe^Rick", "MR", "20230601")
    store(server, ct_files + mr_files)
    return ct, mr


def test_search_statistics_queues_and_associations(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """Studies, patients, series and instances are found by C-FIND keys (wild card, range,
    Modalities in Study) with counts, bytes and paging; unusable keys are 400, unknown UIDs
    404; /api/stats counts what was stored per modality; /api/queues and /api/associations
    answer the admin."""
    server = pacsd_server(database_url)
    ct, mr = two_studies(server, tmp_path)

    status, page = get(server, "/api/studies")
    assert status == 200
    assert {item["StudyInstanceUID"] for item in page["items"]} == {ct, mr}
    assert page["more"] is False
    status, page = get(server, "/api/studies?PatientName=DOE*")
    assert status == 200  # PN wild cards match case-sensitively by default: nothing
    assert page["items"] == []
    status, page = get(server, "/api/studies?PatientName=Doe*")
    [study] = page["items"]
    assert study["StudyInstanceUID"] == ct
    assert study["NumberOfStudyRelatedInstances"] == 3
    assert study["NumberOfStudyRelatedSeries"] == 1
    assert study["ModalitiesInStudy"] == ["CT"]
    assert study["bytes"] > 0
    assert study["last_received"]
    _, page = get(server, "/api/studies?StudyDate=20240101-20241231")
    assert [item["StudyInstanceUID"] for item in page["items"]] == [ct]
    _, page = get(server, "/api/studies?ModalitiesInStudy=MR")
    assert [item["StudyInstanceUID"] for item in page["items"]] == [mr]
    _, page = get(server, f"/api/studies?StudyInstanceUID={quote(ct + chr(92) + mr)}&limit=1")
    assert len(page["items"]) == 1
    assert page["more"] is True
    _, page = get(server, "/api/patients?PatientID=PAT-2")
    assert [item["PatientName"] for item in page["items"]] == ["Roe^Rick"]
    assert page["items"][0]["NumberOfPatientRelatedInstances"] == 2

    status, detail = get(server, f"/api/studies/{ct}")
    assert status == 200
    assert len(detail["series"]) == 1
    series_uid = detail["series"][0]["SeriesInstanceUID"]
    _, series = get(server, f"/api/studies/{ct}/series")
    assert [item["SeriesInstanceUID"] for item in series["items"]] == [series_uid]
    _, instances = get(server, f"/api/series/{series_uid}/instances?limit=2&offset=1")
    assert len(instances["items"]) == 2
    assert instances["more"] is False
    assert all(item["bytes"] > 0 and item["received"] for item in instances["items"])

    assert get(server, "/api/studies?NoSuchKeyword=1")[0] == 400
    status, problem = get(server, "/api/studies?Modality=CT")
    assert status == 400
    assert "ModalitiesInStudy" in problem["error"]
    assert get(server, "/api/studies?limit=x")[0] == 400
    assert get(server, "/api/studies/1.2.3.4")[0] == 404
    assert get(server, "/api/studies/1.2.3.4/series")[0] == 404
    assert get(server, "/api/series/1.2.3.4/instances")[0] == 404

    status, stats = get(server, "/api/stats")
    assert status == 200
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
        2, 2, 2, 5,
    )  # fmt: skip
    assert stats["modalities"]["CT"]["instances"] == 3
    assert stats["modalities"]["MR"]["instances"] == 2
    assert stats["bytes"] == sum(m["bytes"] for m in stats["modalities"].values())
    assert stats["storage"]["free_bytes"] > 0
    status, queues = get(server, "/api/queues")
    assert status == 200
    assert queues["commitment"]["pending"] == 0
    assert queues["ups_events"]["pending"] == 0
    status, associations = get(server, "/api/associations")
    assert status == 200
    assert "associations" in associations


def test_delete_is_refused_by_the_default_rules(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """The default http.rules give nobody `delete`: DELETE is 403 and the study stays."""
    server = pacsd_server()
    ct, _mr = two_studies(server, tmp_path)
    status, problem = http("DELETE", f"{server.http_url}/api/studies/{ct}")
    assert status == 403
    assert "delete" in problem["error"]
    assert ct in found_study_uids(server)


def test_delete_instance_then_study_is_audited_and_leaves_nothing(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """With a rule allowing delete: an instance goes (its file too; the study keeps the
    others), then the whole study (its patient with it); each deletion is audited as Study
    Deleted "deleted by ... via http"; C-FIND no longer finds them; index and files agree;
    a dry run and an unknown UID delete nothing."""
    server = pacsd_server(database_url, http={"rules": DELETERS})
    ct, mr = two_studies(server, tmp_path)
    rows = {row["sop_instance_uid"]: row for row in index_rows(database_url)}
    victim = sorted(found_instance_uids(server, ct))[0]
    victim_file = server.storage_root / rows[victim]["file_path"]
    assert victim_file.exists()

    status, planned = http("DELETE", f"{server.http_url}/api/instances/{victim}?dry_run=true")
    assert status == 200
    assert planned["deleted"] is False
    assert planned["instances"] == 1
    assert victim_file.exists()
    status, done = http("DELETE", f"{server.http_url}/api/instances/{victim}")
    assert status == 200
    assert done["deleted"] is True
    assert done["instances"] == 1
    assert not victim_file.exists()
    assert victim not in found_instance_uids(server, ct)
    assert len(found_instance_uids(server, ct)) == 2
    [message] = study_deleted(server, ct)
    assert "deleted by anonymous@127.0.0.1 via http" in message

    status, done = http("DELETE", f"{server.http_url}/api/studies/{ct}")
    assert status == 200
    assert done["instances"] == 2
    assert found_study_uids(server) == {mr}
    assert len(study_deleted(server, ct)) == 2
    assert http("DELETE", f"{server.http_url}/api/studies/{ct}")[0] == 404
    _, page = http("GET", f"{server.http_url}/api/patients")
    assert [item["PatientID"] for item in page["items"]] == ["PAT-2"]
    remaining = assert_index_matches_files(database_url, server.storage_root)
    assert {row["study_instance_uid"] for row in remaining} == {mr}


def test_delete_while_storescu_stores_into_the_same_study(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    """DELETEs of a study while DCMTK's storescu sends more instances of it: each instance
    ends up whole (row and file) or absent, never a row without its file nor a file without
    its row; a last DELETE removes what arrived after the others."""
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed")
    server = pacsd_server(database_url, http={"rules": DELETERS})
    uid, first = study_files(tmp_path / "first", 5)
    store(server, first)
    study = datagen.StudyContext(study_instance_uid=uid)
    more = [
        datagen.write_part10(datagen.ct_image(study, n, 32), tmp_path / "more" / f"{n}.dcm")
        for n in range(1, 61)
    ]
    command = ["storescu", "-aet", "DCMTKSCU", "-aec", "PACSD", server.host, str(server.port)]
    sender = subprocess.Popen(
        [*command, *map(str, more)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    statuses: list[int] = []
    deadline = time.monotonic() + STORESCU_TIMEOUT_S
    try:
        while sender.poll() is None and len(statuses) < MAX_DELETES:
            assert time.monotonic() < deadline, "storescu did not finish"
            statuses.append(http("DELETE", f"{server.http_url}/api/studies/{uid}")[0])
        sender.wait(STORESCU_TIMEOUT_S)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    assert set(statuses) <= {200, 404}, statuses
    assert 200 in statuses
    rows = assert_index_matches_files(database_url, server.storage_root)
    assert {row["study_instance_uid"] for row in rows} <= {uid}
    assert found_instance_uids(server, uid) == {row["sop_instance_uid"] for row in rows}
    final, _ = http("DELETE", f"{server.http_url}/api/studies/{uid}")
    assert final == (200 if rows else 404)
    assert assert_index_matches_files(database_url, server.storage_root) == []
    assert uid not in found_study_uids(server)
