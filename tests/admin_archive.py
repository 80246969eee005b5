"""Helpers of the admin tests (API, command line, retention): generated studies stored into
a real pacsd, C-FIND against it, ages written into its index, its audit trail read back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, update

from pacsd.index.models import Instance, Series, Study
from tests import datagen
from tests.harness import PacsdProcess, audit_records
from tests.qr_scu import FIND, collect, identifier, qr_association
from tests.scu import store_files

HTTP_TIMEOUT_S = 30


def study_files(
    folder: Path,
    count: int,
    patient_id: str = "PAT-0001",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    study_date: str = "20240315",
) -> tuple[str, list[Path]]:
    """(Study Instance UID, `count` small Part 10 files of one series of a new study)."""
    study = datagen.StudyContext(
        patient_id=patient_id, patient_name=patient_name, study_date=study_date
    )
    paths = []
    for number in range(1, count + 1):
        if modality == "MR":
            ds = datagen.mr_image(study, number)
        else:
            ds = datagen.ct_image(study, number, 32)
        paths.append(datagen.write_part10(ds, folder / f"{modality}{number:04d}.dcm"))
    return study.study_instance_uid, paths


def store(server: PacsdProcess, paths: list[Path]) -> None:
    """C-STORE `paths` (pynetdicom), each answered Success."""
    results = store_files(server.host, server.port, paths)
    assert [status for status, _ in results] == [0x0000] * len(paths), results


def found_study_uids(server: PacsdProcess) -> set[str]:
    """The Study Instance UIDs a study-level C-FIND returns."""
    with qr_association(server, [FIND["S"]]) as assoc:
        query = identifier("STUDY", StudyInstanceUID="")
        responses = collect(assoc.send_c_find(query, FIND["S"]))
    assert responses.final_status == 0x0000
    return responses.values("StudyInstanceUID")


def found_instance_uids(server: PacsdProcess, study_uid: str) -> set[str]:
    """The SOP Instance UIDs C-FIND returns for one study (series, then each one's images:
    hierarchical queries name one UID per level above)."""
    found: set[str] = set()
    with qr_association(server, [FIND["S"]]) as assoc:
        query = identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="")
        series = collect(assoc.send_c_find(query, FIND["S"]))
        assert series.final_status == 0x0000
        for series_uid in series.values("SeriesInstanceUID"):
            query = identifier(
                "IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=""
            )
            images = collect(assoc.send_c_find(query, FIND["S"]))
            assert images.final_status == 0x0000
            found |= images.values("SOPInstanceUID")
    return found


def set_received(database_url: str, study_uid: str, when: datetime) -> None:
    """Make a study's instances look received at `when` (as pacsd's own model writes it)."""
    engine = create_engine(database_url)
    try:
        series = select(Series.pk).join(Study, Series.study_fk == Study.pk)
        series = series.where(Study.study_instance_uid == study_uid)
        with engine.begin() as connection:
            connection.execute(
                update(Instance).where(Instance.series_fk.in_(series)).values(received_at=when)
            )
    finally:
        engine.dispose()


def audit_messages(server: PacsdProcess) -> list[dict[str, Any]]:
    """Every message of the server's audit file so far."""
    return audit_records(server.config_path.parent / "audit.jsonl")


def study_deleted(server: PacsdProcess, study_uid: str, timeout: float = 10.0) -> list[str]:
    """The Study Deleted (110105) messages naming `study_uid`, as JSON text, once one is
    written (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            json.dumps(message)
            for message in audit_messages(server)
            if message["EventIdentification"]["EventID"]["csd-code"] == "110105"
            and study_uid in json.dumps(message)
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request: (status, parsed JSON body), error statuses included."""
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
