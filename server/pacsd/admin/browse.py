"""Browse the index: patients, studies, series and instances matching C-FIND keys.

Keys are DICOM keywords with values written as a C-FIND identifier carries them (PS3.4
C.2.2.2): `PatientName=DOE*` (wild card matching, C.2.2.2.4), `StudyDate=20240101-20241231`
(range matching, C.2.2.2.5), `StudyInstanceUID=1.2.3\\1.2.4` (list of UID matching,
C.2.2.2.2), `ModalitiesInStudy=CT`. They are matched by the C-FIND engine itself
(index/query.py), so that a search here and a C-FIND from a viewer agree. Each result is a
plain dict (keywords to text, counts as numbers) with what the index knows beyond the header:
bytes on disk and the last time an instance arrived.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import func, select

from pacsd.dicom.matching import Key, MatchOptions, json_values, parse_identifier
from pacsd.dicom.qr_models import Level
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Series, Study
from pacsd.index.query import MODALITIES_IN_STUDY, Match, find, usable_keys

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
LEVELS: Mapping[str, Level] = {
    "patient": Level.PATIENT,
    "study": Level.STUDY,
    "series": Level.SERIES,
    "instance": Level.IMAGE,
}
# What each level returns, from the representative header (index/query.py).
FIELDS: Mapping[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    ),
    Level.STUDY: (
        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
        "StudyDescription", "ReferringPhysicianName", "PatientID", "PatientName",
        "PatientBirthDate", "PatientSex",
    ),
    Level.SERIES: (
        "SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesNumber",
        "SeriesDescription", "BodyPartExamined", "SeriesDate", "SeriesTime",
    ),
    Level.IMAGE: (
        "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SeriesInstanceUID",
        "StudyInstanceUID",
    ),
}  # fmt: skip
# PS3.4 C.6.1.1: the computed Number of ... Related ... return keys of each level.
COUNTS: Mapping[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    Level.STUDY: ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("NumberOfSeriesRelatedInstances",),
    Level.IMAGE: (),
}
_UID_COLUMNS = {
    Level.STUDY: Study.study_instance_uid,
    Level.SERIES: Series.series_instance_uid,
}


class SearchError(ValueError):
    """A search key pacsd cannot use (unknown keyword, a key below the level, ...)."""


def parse_keys(
    pairs: Iterable[tuple[str, str]], level: Level, options: MatchOptions | None = None
) -> list[Key]:
    """The matching keys of `pairs` (keyword, value) at `level`; SearchError when one is no
    DICOM keyword or cannot be matched at that level."""
    identifier = Dataset()
    for keyword, value in pairs:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise SearchError(f"{keyword}: not a DICOM keyword")
        vr = dictionary_VR(tag)
        if vr == "SQ" or len(vr) != 2:
            raise SearchError(f"{keyword}: sequences and multi-VR attributes are not searchable")
        try:
            identifier.add_new(tag, vr, value)
        except (TypeError, ValueError) as exc:
            raise SearchError(f"{keyword}: {exc}") from exc
    keys = parse_identifier(identifier, options or MatchOptions())
    usable, refused = usable_keys(keys, level)
    if refused:
        names = ", ".join(key.keyword for key in refused)
        hint = " (ModalitiesInStudy matches a study's series)" if level < Level.SERIES else ""
        raise SearchError(f"cannot match {names} at {level.name.lower()} level{hint}")
    return usable


def search(
    database: IndexDatabase,
    level: Level,
    keys: Sequence[Key],
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of the entities at `level` matching `keys`, in index order (blocking):
    {"level", "offset", "limit", "more", "items"}; `more` says whether a next page exists."""
    limit = max(1, min(limit, MAX_LIMIT))
    offset = max(0, offset)
    counted = [Key(int(Tag(keyword)), "IS") for keyword in COUNTS[level]]
    batch = min(max(offset + limit + 1, 50), 500)
    found = find(database, level, [*keys, *counted], batch_size=batch)
    matches = list(itertools.islice(found, offset, offset + limit + 1))
    items = [_document(level, match) for match in matches[:limit]]
    _add_storage(database, level, items)
    return {
        "level": level_name(level),
        "offset": offset,
        "limit": limit,
        "more": len(matches) > limit,
        "items": items,
    }


def study(database: IndexDatabase, uid: str) -> dict[str, Any] | None:
    """One study with its series, or None when the index has no such study (blocking)."""
    keys = parse_keys([("StudyInstanceUID", uid)], Level.STUDY)
    found = search(database, Level.STUDY, keys, limit=1)["items"]
    if not found:
        return None
    series_keys = parse_keys([("StudyInstanceUID", uid)], Level.SERIES)
    document: dict[str, Any] = found[0]
    document["series"] = search(database, Level.SERIES, series_keys, limit=MAX_LIMIT)["items"]
    return document


def level_name(level: Level) -> str:
    """The level's name in this API: patient, study, series, instance."""
    return next(name for name, value in LEVELS.items() if value is level)


def _document(level: Level, match: Match) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for keyword in FIELDS[level]:
        element = match.header.get(f"{int(Tag(keyword)):08X}")
        document[keyword] = "\\".join(json_values(element)) if element else ""
    if level is Level.STUDY:
        document["ModalitiesInStudy"] = list(match.computed.get(MODALITIES_IN_STUDY, []))
    for keyword in COUNTS[level]:
        values = match.computed.get(int(Tag(keyword)), ["0"])
        document[keyword] = int(values[0]) if values else 0
    return document


def _add_storage(database: IndexDatabase, level: Level, items: list[dict[str, Any]]) -> None:
    """Bytes on disk and the last arrival of each study or series; file details of each
    instance (one statement per page)."""
    if not items or level is Level.PATIENT:
        return
    if level is Level.IMAGE:
        uids = [item["SOPInstanceUID"] for item in items]
        statement = select(
            Instance.sop_instance_uid,
            Instance.file_size,
            Instance.received_at,
            Instance.transfer_syntax_uid,
            Instance.calling_ae_title,
        ).where(Instance.sop_instance_uid.in_(uids))
        with database.reading_connection() as connection:
            rows = {row[0]: row for row in connection.execute(statement)}
        for item in items:
            row = rows.get(item["SOPInstanceUID"])
            if row is not None:
                item.update(
                    bytes=int(row[1]),
                    received=iso_time(row[2]),
                    TransferSyntaxUID=row[3],
                    calling_ae_title=row[4],
                )
        return
    uid_column = _UID_COLUMNS[level]
    key = "StudyInstanceUID" if level is Level.STUDY else "SeriesInstanceUID"
    uids = [item[key] for item in items]
    totals = (
        select(uid_column, func.sum(Instance.file_size), func.max(Instance.received_at))
        .select_from(Instance)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .where(uid_column.in_(uids))
        .group_by(uid_column)
    )
    with database.reading_connection() as connection:
        sums = {row[0]: (int(row[1] or 0), row[2]) for row in connection.execute(totals)}
    for item in items:
        size, last = sums.get(item[key], (0, None))
        item.update(bytes=size, last_received=iso_time(last))


def iso_time(moment: datetime | None) -> str:
    """A stored time as ISO 8601 in UTC (SQLite gives it back without its zone)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")
