"""C-FIND against the index: matchers narrowed in SQL, checked exactly, streamed in batches.

Keys with an index column become SQL conditions that select a superset of the matches (SQLite's
LIKE ignores ASCII case, for instance); every candidate is then checked by the matchers of
dicom/matching.py on its representative header, which is what makes a key without a column
still correct. Rows are read by keyset pagination (`pk > last ORDER BY pk LIMIT n`), one short
read transaction per batch: a query never holds the whole result, nor a transaction across the
time the peer takes to read the responses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydicom.tag import Tag
from sqlalchemy import ColumnElement, Connection, Select, and_, exists, false, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, aliased

from pacsd.dicom.matching import (
    DateTimeRangeMatcher,
    JsonRecord,
    Key,
    RangeMatcher,
    Record,
    ValueMatcher,
    ZonedRecord,
)
from pacsd.dicom.qr_models import Level
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Patient, Series, Study


def _tag(keyword: str) -> int:
    return int(Tag(keyword))


# Keys with an index column: tag -> (level, column). Text columns are clipped at 256
# characters, longer than any conformant value of these VRs (LO 64, PN 3 x 64 + 2).
COLUMNS: Mapping[int, tuple[Level, InstrumentedAttribute[Any]]] = {
    _tag("PatientID"): (Level.PATIENT, Patient.patient_id),
    _tag("IssuerOfPatientID"): (Level.PATIENT, Patient.issuer_of_patient_id),
    _tag("PatientName"): (Level.PATIENT, Patient.patient_name),
    _tag("PatientBirthDate"): (Level.PATIENT, Patient.patient_birth_date),
    _tag("PatientSex"): (Level.PATIENT, Patient.patient_sex),
    _tag("StudyInstanceUID"): (Level.STUDY, Study.study_instance_uid),
    _tag("StudyDate"): (Level.STUDY, Study.study_date),
    _tag("AccessionNumber"): (Level.STUDY, Study.accession_number),
    _tag("StudyID"): (Level.STUDY, Study.study_id),
    _tag("ReferringPhysicianName"): (Level.STUDY, Study.referring_physician_name),
    _tag("StudyDescription"): (Level.STUDY, Study.study_description),
    _tag("SeriesInstanceUID"): (Level.SERIES, Series.series_instance_uid),
    _tag("Modality"): (Level.SERIES, Series.modality),
    _tag("SeriesNumber"): (Level.SERIES, Series.series_number),
    _tag("SeriesDescription"): (Level.SERIES, Series.series_description),
    _tag("BodyPartExamined"): (Level.SERIES, Series.body_part_examined),
    _tag("SeriesDate"): (Level.SERIES, Series.series_date),
    _tag("SOPInstanceUID"): (Level.IMAGE, Instance.sop_instance_uid),
    _tag("SOPClassUID"): (Level.IMAGE, Instance.sop_class_uid),
    _tag("InstanceNumber"): (Level.IMAGE, Instance.instance_number),
}
MODALITIES_IN_STUDY = _tag("ModalitiesInStudy")
SOP_CLASSES_IN_STUDY = _tag("SOPClassesInStudy")
# PS3.4 C.6.1.1 / C.6.2.1: computed return keys ("-" for matching), with their level.
COUNTS: Mapping[int, Level] = {
    _tag("NumberOfPatientRelatedStudies"): Level.PATIENT,
    _tag("NumberOfPatientRelatedSeries"): Level.PATIENT,
    _tag("NumberOfPatientRelatedInstances"): Level.PATIENT,
    _tag("NumberOfStudyRelatedSeries"): Level.STUDY,
    _tag("NumberOfStudyRelatedInstances"): Level.STUDY,
    _tag("NumberOfSeriesRelatedInstances"): Level.SERIES,
}
KEY_LEVELS: Mapping[int, Level] = {
    **{tag: level for tag, (level, _column) in COLUMNS.items()},
    **COUNTS,
    MODALITIES_IN_STUDY: Level.STUDY,
    SOP_CLASSES_IN_STUDY: Level.STUDY,
}
_TABLES = {Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.IMAGE: Instance}
_PKS: Mapping[Level, InstrumentedAttribute[int]] = {
    Level.PATIENT: Patient.pk,
    Level.STUDY: Study.pk,
    Level.SERIES: Series.pk,
    Level.IMAGE: Instance.pk,
}
AnySelect = Select[*tuple[Any, ...]]
_Select = TypeVar("_Select", bound=AnySelect)
_LIKE_ESCAPE = "!"
# Timezone query adjustment (dicom/matching.ZonedRecord) moves a stored date by at most the
# distance between two offsets (-12:00 .. +14:00): date columns are narrowed this much wider.
ZONE_MARGIN_DAYS = 2


@dataclass(frozen=True)
class Match:
    """One matching entity: its representative header and its computed values."""

    header: Mapping[str, Any]
    computed: Mapping[int, list[str]]


@dataclass(frozen=True)
class _Row:
    pk: int
    patient_pk: int
    study_pk: int | None
    series_pk: int | None
    modalities_in_study: str | None
    header: Mapping[str, Any] | None  # IMAGE level: the instance's own header


def usable_keys(keys: Sequence[Key], level: Level) -> tuple[list[Key], list[Key]]:
    """(keys matched at `level`, keys pacsd cannot match there: below the level, or counts)."""
    usable: list[Key] = []
    refused: list[Key] = []
    for key in keys:
        key_level = KEY_LEVELS.get(key.tag, level)
        below = key_level > level
        if below or (key.tag in COUNTS and key.matcher is not None) or not key.supported:
            refused.append(key)
        else:
            usable.append(key)
    return usable, refused


def find(
    database: IndexDatabase,
    level: Level,
    keys: Sequence[Key],
    batch_size: int = 200,
    zone: int | None = None,
) -> Iterator[Match]:
    """Every entity at `level` that matches all `keys` (usable ones), in index order.

    Keys of the levels above `level` match the entity's parents (its representative header
    carries their attributes; their columns are joined). With `zone` (minutes east of UTC),
    stored dates and times are matched in that timezone (timezone query adjustment).
    """
    matched = [key for key in keys if key.matcher is not None]
    statement = _statement(level, matched, ZONE_MARGIN_DAYS if zone is not None else 0)
    after = 0
    while True:
        with database.reading_connection() as session:
            rows = _rows(session, statement, level, after, batch_size)
            matches = _matches(session, level, rows, matched, keys, zone) if rows else []
        yield from matches
        if len(rows) < batch_size:
            return
        after = rows[-1].pk


def _statement(level: Level, keys: Sequence[Key], widen_days: int = 0) -> AnySelect:
    statement: AnySelect = select(_PKS[level], Patient.pk)
    if level >= Level.STUDY:
        statement = statement.add_columns(Study.pk, Study.modalities_in_study)
    if level >= Level.SERIES:
        statement = statement.add_columns(Series.pk)
    if level is Level.IMAGE:
        statement = statement.add_columns(Instance.header)
    statement = _joined(statement, level)
    conditions = [clause for key in keys if (clause := _condition(key, widen_days)) is not None]
    return statement.where(*conditions)


def _joined(statement: _Select, level: Level) -> _Select:
    if level is Level.PATIENT:
        return statement.select_from(Patient)
    statement = statement.select_from(_TABLES[level])
    if level is Level.IMAGE:
        statement = statement.join(Series, Instance.series_fk == Series.pk)
    if level >= Level.SERIES:
        statement = statement.join(Study, Series.study_fk == Study.pk)
    return statement.join(Patient, Study.patient_fk == Patient.pk)


def _rows(
    session: Connection, statement: AnySelect, level: Level, after: int, limit: int
) -> list[_Row]:
    pk = _PKS[level]
    result = session.execute(statement.where(pk > after).order_by(pk).limit(limit))
    rows = []
    for values in result:
        study_pk, modalities = (values[2], values[3]) if level >= Level.STUDY else (None, None)
        series_pk = values[4] if level >= Level.SERIES else None
        header = values[5] if level is Level.IMAGE else None
        rows.append(_Row(values[0], values[1], study_pk, series_pk, modalities, header))
    return rows


def _condition(key: Key, widen_days: int = 0) -> ColumnElement[bool] | None:
    """A SQL condition selecting a superset of the key's matches, or None (no narrowing).

    The study's series and instances are reached through aliases correlated to the outer
    Study only: at SERIES and IMAGE level the outer query joins Series (and Instance) too,
    which would otherwise be correlated away (or narrow to the row's own series).
    """
    if key.tag == MODALITIES_IN_STUDY:
        series = aliased(Series)
        clause = column_condition(series.modality, key)
        if clause is None:
            return None
        in_study = select(series.pk).where(series.study_fk == Study.pk, clause)
        return exists(in_study.correlate(Study))
    if key.tag == SOP_CLASSES_IN_STUDY:
        instance, series = aliased(Instance), aliased(Series)
        clause = column_condition(instance.sop_class_uid, key)
        if clause is None:
            return None
        in_study = select(instance.pk).join(series, instance.series_fk == series.pk)
        return exists(in_study.where(series.study_fk == Study.pk, clause).correlate(Study))
    mapped = COLUMNS.get(key.tag)
    return column_condition(mapped[1], key, widen_days) if mapped is not None else None


def column_condition(
    column: InstrumentedAttribute[Any], key: Key, widen_days: int = 0
) -> ColumnElement[bool] | None:
    """A SQL condition on `column` selecting a superset of the key's matches, or None;
    `widen_days` widens date conditions by that many days on each side."""
    matcher = key.matcher
    if isinstance(matcher, ValueMatcher):
        if matcher.vr == "DA" and widen_days:
            dates = sorted(matcher.literals)
            return (
                _date_range(column, *_widened(dates[0], dates[-1], widen_days)) if dates else None
            )
        return _value_condition(column, matcher)
    if isinstance(matcher, RangeMatcher) and matcher.vr == "DA":
        return _date_range(column, *_widened(matcher.low, matcher.high, widen_days))
    if isinstance(matcher, DateTimeRangeMatcher):
        return _date_range(column, *_widened(matcher.low[:8], matcher.high[:8], widen_days))
    return None  # TM and DT ranges, sequences, fuzzy names: checked on the header only


def _widened(low: str, high: str, days: int) -> tuple[str, str]:
    """Date bounds `days` wider; a bound that is no calendar date is dropped (open end)."""
    if not days:
        return low, high
    return _moved_date(low, -days, ""), _moved_date(high, days, "~")


def _moved_date(date: str, days: int, open_end: str) -> str:
    if date in ("", "~", "99999999"):
        return date
    try:
        return (datetime.strptime(date, "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return open_end


def _date_range(column: InstrumentedAttribute[Any], low: str, high: str) -> ColumnElement[bool]:
    conditions = [column != "", column >= low]
    if high not in ("~", "99999999"):
        conditions.append(column <= high)
    return and_(*conditions)


def _value_condition(
    column: InstrumentedAttribute[Any], matcher: ValueMatcher
) -> ColumnElement[bool] | None:
    if column.type.python_type is int:
        numbers = [_integer(value) for value in matcher.literals]
        if matcher.patterns or None in numbers:
            return None
        return column.in_(numbers)
    alternatives: list[ColumnElement[bool]] = []
    plain = not matcher.case_insensitive and matcher.vr != "PN"
    if plain and matcher.literals:
        # One IN, not an OR per value: SQLite refuses an expression tree deeper than 1000,
        # and a C-MOVE may list thousands of UIDs.
        alternatives.append(column.in_(matcher.literals))
    for value in matcher.patterns if plain else matcher.literals + matcher.patterns:
        clause = _like(column, matcher, value)
        if clause is None:
            return None
        alternatives.append(clause)
    return or_(*alternatives) if alternatives else false()


def _like(
    column: InstrumentedAttribute[Any], matcher: ValueMatcher, value: str
) -> ColumnElement[bool] | None:
    wildcard = "*" in value or "?" in value
    pattern = _like_pattern(value) if wildcard else None
    clause: ColumnElement[bool]
    if matcher.case_insensitive:
        if not value.isascii():
            return None  # SQLite's lower() only folds ASCII: leave this key to the matcher
        pattern = pattern or _like_pattern(value)
        clause = column.ilike(pattern, escape=_LIKE_ESCAPE)
    elif pattern is not None:
        clause = column.like(pattern, escape=_LIKE_ESCAPE)
    else:
        clause = column == value
    if matcher.vr == "PN":  # the alphabetic group alone may match (dicom/matching.py)
        group = (pattern or _like_pattern(value)) + "=%"
        alt = column.ilike if matcher.case_insensitive else column.like
        clause = or_(clause, alt(group, escape=_LIKE_ESCAPE))
    return clause


def _like_pattern(value: str) -> str:
    escaped = "".join(f"{_LIKE_ESCAPE}{c}" if c in "%_!" else c for c in value)
    return escaped.replace("*", "%").replace("?", "_")


def _integer(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _matches(
    session: Connection,
    level: Level,
    rows: list[_Row],
    matched: Sequence[Key],
    keys: Sequence[Key],
    zone: int | None = None,
) -> list[Match]:
    wanted = {key.tag for key in keys}
    computed = _computed_values(session, level, rows, wanted)
    headers = _headers(session, level, rows)
    matches = []
    for row in rows:
        header = headers.get(row.pk)
        if header is None:
            continue  # an entity without instances has nothing to return
        stored = JsonRecord(header, computed.get(row.pk, {}))
        record: Record = stored if zone is None else ZonedRecord.of(stored, zone)
        if all(key.matcher is not None and key.matcher.matches(record) for key in matched):
            matches.append(Match(header, stored.computed))
    return matches


def _headers(session: Connection, level: Level, rows: list[_Row]) -> dict[int, Mapping[str, Any]]:
    """Each row's representative header: its first instance's (the instance's own at IMAGE)."""
    if level is Level.IMAGE:
        return {row.pk: row.header for row in rows if row.header is not None}
    first = _first_instances(session, level, [row.pk for row in rows])
    statement = select(Instance.pk, Instance.header).where(Instance.pk.in_(first.values()))
    loaded = {pk: header for pk, header in session.execute(statement)}
    return {pk: loaded[instance] for pk, instance in first.items() if instance in loaded}


def _instances_under(level: Level) -> tuple[InstrumentedAttribute[Any], AnySelect]:
    """The column holding the `level` key of an instance, and a select joined to reach it."""
    if level is Level.SERIES:
        return Instance.series_fk, select().select_from(Instance)
    joined = select().select_from(Instance).join(Series, Instance.series_fk == Series.pk)
    if level is Level.STUDY:
        return Series.study_fk, joined
    return Study.patient_fk, joined.join(Study, Series.study_fk == Study.pk)


def _first_instances(session: Connection, level: Level, pks: list[int]) -> dict[int, int]:
    owner, statement = _instances_under(level)
    statement = statement.add_columns(owner, func.min(Instance.pk))
    grouped = statement.where(owner.in_(pks)).group_by(owner)
    return {owner_pk: first for owner_pk, first in session.execute(grouped)}


def _computed_values(
    session: Connection, level: Level, rows: list[_Row], wanted: set[int]
) -> dict[int, dict[int, list[str]]]:
    """ModalitiesInStudy, SOPClassesInStudy and the Number of ... Related keys, per row."""
    computed: dict[int, dict[int, list[str]]] = {row.pk: {} for row in rows}
    for row in rows:
        if row.modalities_in_study is not None:
            modalities = [m for m in row.modalities_in_study.split("\\") if m]
            computed[row.pk][MODALITIES_IN_STUDY] = modalities
    for count_level in {COUNTS[tag] for tag in wanted if tag in COUNTS}:
        if count_level <= level:
            _add_counts(session, count_level, rows, computed)
    if SOP_CLASSES_IN_STUDY in wanted and level >= Level.STUDY:
        _add_sop_classes(session, rows, computed)
    return computed


def _owner_pk(row: _Row, level: Level) -> int | None:
    return {Level.PATIENT: row.patient_pk, Level.STUDY: row.study_pk, Level.SERIES: row.series_pk}[
        level
    ]


def _add_counts(
    session: Connection, level: Level, rows: list[_Row], computed: dict[int, dict[int, list[str]]]
) -> None:
    owner, statement = _instances_under(level)
    statement = statement.add_columns(
        owner,
        func.count(Instance.pk),
        func.count(Instance.series_fk.distinct()),
        func.count(Series.study_fk.distinct()) if level is Level.PATIENT else func.count(),
    )
    owners = {pk for row in rows if (pk := _owner_pk(row, level)) is not None}
    counts = {
        values[0]: values[1:]
        for values in session.execute(statement.where(owner.in_(owners)).group_by(owner))
    }
    for row in rows:
        instances, series, studies = counts.get(_owner_pk(row, level), (0, 0, 0))
        computed[row.pk].update(_count_values(level, instances, series, studies))


def _count_values(level: Level, instances: int, series: int, studies: int) -> dict[int, list[str]]:
    if level is Level.PATIENT:
        names = {"Studies": studies, "Series": series, "Instances": instances}
        return {_tag(f"NumberOfPatientRelated{n}"): [str(v)] for n, v in names.items()}
    if level is Level.STUDY:
        return {
            _tag("NumberOfStudyRelatedSeries"): [str(series)],
            _tag("NumberOfStudyRelatedInstances"): [str(instances)],
        }
    return {_tag("NumberOfSeriesRelatedInstances"): [str(instances)]}


def _add_sop_classes(
    session: Connection, rows: list[_Row], computed: dict[int, dict[int, list[str]]]
) -> None:
    studies = {row.study_pk for row in rows if row.study_pk is not None}
    statement = (
        select(Series.study_fk, Instance.sop_class_uid)
        .join(Series, Instance.series_fk == Series.pk)
        .where(Series.study_fk.in_(studies))
        .distinct()
    )
    classes: dict[int, list[str]] = {}
    for study_pk, sop_class in session.execute(statement):
        classes.setdefault(study_pk, []).append(sop_class)
    for row in rows:
        if row.study_pk is not None:
            computed[row.pk][SOP_CLASSES_IN_STUDY] = sorted(classes.get(row.study_pk, []))
