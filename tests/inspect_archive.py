"""Read what a pacsd archive holds (index rows, files) to check it from the outside."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from pacsd.dicom.part10 import read_layout

_INDEX_QUERY = text(
    """
    SELECT p.patient_id, p.issuer_of_patient_id, p.patient_name, p.patient_birth_date,
           p.patient_sex, st.study_instance_uid, st.study_date, st.study_time,
           st.accession_number, st.study_id, st.referring_physician_name,
           st.study_description, st.modalities_in_study, se.series_instance_uid,
           se.modality, se.series_number, se.series_description, se.body_part_examined,
           i.sop_instance_uid, i.sop_class_uid, i.instance_number, i.transfer_syntax_uid,
           i.file_path, i.file_size, i.file_sha256, i.calling_ae_title, i.header,
           i.received_at
    FROM instance i
    JOIN series se ON se.pk = i.series_fk
    JOIN study st ON st.pk = se.study_fk
    JOIN patient p ON p.pk = st.patient_fk
    ORDER BY i.pk
    """
)


def index_rows(database_url: str) -> list[dict[str, Any]]:
    """Every indexed instance with its series, study and patient attributes."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(_INDEX_QUERY)]
    finally:
        engine.dispose()
    for row in rows:  # SQLite hands JSON back as text, PostgreSQL (JSONB) as a dict
        if isinstance(row["header"], str):
            row["header"] = json.loads(row["header"])
    return rows


def stored_files(storage_root: Path) -> dict[str, str]:
    """{relative path: sha256} of the instance files (work folders excluded)."""
    files: dict[str, str] = {}
    for path in storage_root.rglob("*"):
        relative = path.relative_to(storage_root)
        if path.is_file() and relative.parts[0] not in (".tmp", ".spool"):
            files[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def work_files(storage_root: Path) -> list[Path]:
    """Files left in the temporary and spool folders."""
    return [p for folder in (".tmp", ".spool") for p in (storage_root / folder).glob("*")]


def assert_index_matches_files(database_url: str, storage_root: Path) -> list[dict[str, Any]]:
    """Files on disk and index rows correspond one to one, checksums included."""
    rows = index_rows(database_url)
    indexed = {row["file_path"]: row["file_sha256"] for row in rows}
    assert len(indexed) == len(rows), "two index rows share a file"
    assert stored_files(storage_root) == indexed
    return rows


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (everything after the file meta)."""
    with path.open("rb") as fp:
        layout = read_layout(fp)
        fp.seek(layout.dataset_offset)
        return fp.read()


def file_meta(path: Path) -> Any:
    """The file meta group of a Part 10 file."""
    with path.open("rb") as fp:
        return read_layout(fp).meta
