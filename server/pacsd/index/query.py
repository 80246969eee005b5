"""C-FIND against the index: matchers narrowed in SQL, checked exactly, streamed in batches.

Keys with an index column become SQL conditions that select a superset of the matches (SQLite's
LIKE ignores ASCII case, for instance); every candidate is then checked by the matchers of
dicom/matching.py on its representative header, which is what makes a key without a column
still correct. Rows are read by keyset pagination (`pk > last ORDER BY pk LIMIT n`), one short
read transaction per batch: a query never holds the whole result, nor a transaction across the
time the peer takes to read the responses. A batch is one statement (candidates, representative
headers, counts), built once per shape of the keys' conditions (index/conditions.py) and run
again with their values bound.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag
from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Select,
    bindparam,
    exists,
    func,
    null,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler

from pacsd.dicom.matching import JsonRecord, Key, Record, ZonedRecord
from pacsd.dicom.qr_models import Level
from pacsd.index.conditions import Plan, Shape, build, plan_condition
from pacsd.index.conditions import column_condition as column_condition
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
_COUNT_KEYWORDS = {tag: str(keyword_for_tag(tag)) for tag in COUNTS}
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
    study_pk: int | None
    header: Mapping[str, Any] | None  # the representative header (the instance's own at IMAGE)
    computed: dict[int, list[str]]


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
    for matches, _more in find_batches(database, level, keys, batch_size, zone):
        yield from matches


def find_batches(
    database: IndexDatabase,
    level: Level,
    keys: Sequence[Key],
    batch_size: int = 200,
    zone: int | None = None,
) -> Iterator[tuple[list[Match], bool]]:
    """`find`'s matches batch by batch, each with whether another batch is read after it.

    One statement per batch, built once per shape (`_statement`): the candidates, each with
    its representative header and the counts the keys ask for.
    """
    matched = [key for key in keys if key.matcher is not None]
    wanted = {key.tag for key in keys}
    plans = _plans(matched, ZONE_MARGIN_DAYS if zone is not None else 0)
    counts = tuple(sorted(t for t in wanted if t in COUNTS and COUNTS[t] <= level))
    shapes = tuple((tag, plan.shape) for tag, plan in plans)
    statement = _statement(level, shapes, counts, batch_size)
    values = (value for _tag, plan in plans for value in plan.values)
    parameters: dict[str, Any] = {f"v{n}": value for n, value in enumerate(values)}
    after = 0
    while True:
        with database.reading_connection() as connection:
            rows = _rows(connection, statement, {**parameters, "after": after}, counts)
            matches = _matches(connection, level, rows, matched, wanted, zone) if rows else []
        more = len(rows) == batch_size
        yield matches, more
        if not more:
            return
        after = rows[-1].pk


def _plans(keys: Sequence[Key], widen_days: int) -> list[tuple[int, Plan]]:
    """The SQL condition plan of each key that has one (see `_condition`)."""
    plans = []
    for key in keys:
        if key.tag == MODALITIES_IN_STUDY:
            plan = plan_condition(Series.modality, key)
        elif key.tag == SOP_CLASSES_IN_STUDY:
            plan = plan_condition(Instance.sop_class_uid, key)
        elif (mapped := COLUMNS.get(key.tag)) is not None:
            plan = plan_condition(mapped[1], key, widen_days)
        else:
            plan = None
        if plan is not None:
            plans.append((key.tag, plan))
    return plans


@functools.lru_cache(maxsize=256)
def _statement(
    level: Level,
    conditions: tuple[tuple[int, Shape], ...],
    counts: tuple[int, ...],
    batch_size: int,
) -> AnySelect:
    """The batch query of one shape (built once): the candidates after `:after`, each with
    its representative header and the requested counts; values bind as :v0, :v1, ...

    Columns: pk, patient pk, study pk, Modalities in Study, series pk, header, counts.
    """
    pk = _PKS[level]
    above = level >= Level.STUDY
    statement: AnySelect = select(
        pk,
        Patient.pk,
        Study.pk if above else null(),
        Study.modalities_in_study if above else null(),
        Series.pk if level >= Level.SERIES else null(),
        Instance.header if level is Level.IMAGE else _representative_header(level),
        *(_count(tag) for tag in counts),
    )
    names = (f"v{number}" for number in itertools.count())
    clauses = [_condition(tag, shape, names) for tag, shape in conditions]
    statement = _joined(statement, level).where(*clauses, pk > bindparam("after"))
    return statement.order_by(pk).limit(batch_size)


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
    connection: Connection,
    statement: AnySelect,
    parameters: dict[str, Any],
    counts: tuple[int, ...],
) -> list[_Row]:
    driver = _DriverSelect.of(statement, connection.dialect)
    found = (
        connection.execute(statement, parameters)
        if driver is None
        else driver.rows(connection, parameters)
    )
    rows = []
    for values in found:
        computed: dict[int, list[str]] = {}
        if values[3] is not None:
            computed[MODALITIES_IN_STUDY] = [m for m in values[3].split("\\") if m]
        for tag, count in zip(counts, values[6:], strict=True):
            computed[tag] = [str(count)]
        header = values[5]
        if isinstance(header, str | bytes):  # SQLite's text; PostgreSQL's driver decodes
            header = orjson.loads(header)
        rows.append(_Row(values[0], values[2], header, computed))
    return rows


class _DriverSelect:
    """A batch statement compiled once for a dialect and run on the connection's DB-API
    cursor: SQLAlchemy's execution of an already compiled statement (an execution context,
    a result, its row processing; for SQLite a BEGIN of its own) cost more than SQLite's
    query, about 0.3 ms of a small C-FIND's 2 on the 2-core test machine. The header
    column comes as the driver gives it (`_rows` decodes SQLite's text). On SQLite the
    statement runs in its own implicit read transaction, as it did in the one SQLAlchemy
    began: one statement sees one snapshot."""

    def __init__(self, statement: AnySelect, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.compiled = compiled
        self.sql = str(compiled)
        self.positions = tuple(compiled.positiontup or ()) if dialect.positional else None
        self.processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
        }

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(statement: AnySelect, dialect: Dialect) -> _DriverSelect | None:
        """The driver form of `statement`; None when SQLAlchemy must render it per run (a
        list of values bound as IN (...): one placeholder per value)."""
        driver = _DriverSelect(statement, dialect)
        return None if driver.compiled.post_compile_params else driver

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> list[Any]:
        bound = self.compiled.construct_params(dict(values))
        for name, processor in self.processors.items():
            bound[name] = processor(bound[name])
        parameters: Any = (
            bound if self.positions is None else tuple(bound[name] for name in self.positions)
        )
        cursor = connection.connection.cursor()
        try:
            cursor.execute(self.sql, parameters)
            return list(cursor.fetchall())
        finally:
            cursor.close()


def _condition(tag: int, shape: Shape, names: Iterator[str]) -> ColumnElement[bool]:
    """The SQL condition of a planned key, its values bound to the next `names`.

    The study's series and instances are reached through aliases correlated to the outer
    Study only: at SERIES and IMAGE level the outer query joins Series (and Instance) too,
    which would otherwise be correlated away (or narrow to the row's own series).
    """
    values = itertools.repeat(None)
    if tag == MODALITIES_IN_STUDY:
        series = aliased(Series)
        clause = build(shape, series.modality, values, names)
        in_study = select(series.pk).where(series.study_fk == Study.pk, clause)
        return exists(in_study.correlate(Study))
    if tag == SOP_CLASSES_IN_STUDY:
        instance, series = aliased(Instance), aliased(Series)
        clause = build(shape, instance.sop_class_uid, values, names)
        in_study = select(instance.pk).join(series, instance.series_fk == series.pk)
        return exists(in_study.where(series.study_fk == Study.pk, clause).correlate(Study))
    return build(shape, COLUMNS[tag][1], values, names)


def _instances_under(level: Level) -> tuple[Any, Any, AnySelect]:
    """(instance alias, series alias, a select of the instances under the outer query's
    entity of `level`, correlated to it); add the columns to it."""
    instance, series, study = aliased(Instance), aliased(Series), aliased(Study)
    statement = select().select_from(instance)
    if level is Level.SERIES:
        return instance, series, statement.where(instance.series_fk == Series.pk).correlate(Series)
    statement = statement.join(series, instance.series_fk == series.pk)
    if level is Level.STUDY:
        return instance, series, statement.where(series.study_fk == Study.pk).correlate(Study)
    statement = statement.join(study, series.study_fk == study.pk)
    return instance, series, statement.where(study.patient_fk == Patient.pk).correlate(Patient)


def _representative_header(level: Level) -> Any:
    """The header of the entity's first instance (lowest pk), or NULL without instances."""
    instance, _series, under = _instances_under(level)
    first = under.add_columns(func.min(instance.pk)).scalar_subquery()
    header = aliased(Instance)
    return select(header.header).where(header.pk == first).scalar_subquery()


def _count(tag: int) -> Any:
    """PS3.4 C.6.1.1.4, C.6.2.1.2: a Number of ... Related ... key, counted over the
    instances under the entity of its level."""
    instance, series, under = _instances_under(COUNTS[tag])
    keyword = _COUNT_KEYWORDS[tag]
    if keyword.endswith("Instances"):
        counted = func.count(instance.pk)
    elif keyword.endswith("Series"):
        counted = func.count(instance.series_fk.distinct())
    else:
        counted = func.count(series.study_fk.distinct())
    return under.add_columns(counted).scalar_subquery()


def _matches(
    connection: Connection,
    level: Level,
    rows: list[_Row],
    matched: Sequence[Key],
    wanted: set[int],
    zone: int | None = None,
) -> list[Match]:
    if SOP_CLASSES_IN_STUDY in wanted and level >= Level.STUDY:
        _add_sop_classes(connection, rows)
    matches = []
    for row in rows:
        if row.header is None:
            continue  # an entity without instances has nothing to return
        stored = JsonRecord(row.header, row.computed)
        record: Record = stored if zone is None else ZonedRecord.of(stored, zone)
        if all(key.matcher is not None and key.matcher.matches(record) for key in matched):
            matches.append(Match(row.header, stored.computed))
    return matches


def _add_sop_classes(connection: Connection, rows: list[_Row]) -> None:
    """SOP Classes in Study of each row's study (PS3.4 C.6.1.1.5)."""
    studies = {row.study_pk for row in rows if row.study_pk is not None}
    statement = (
        select(Series.study_fk, Instance.sop_class_uid)
        .join(Series, Instance.series_fk == Series.pk)
        .where(Series.study_fk.in_(studies))
        .distinct()
    )
    classes: dict[int, list[str]] = {}
    for study_pk, sop_class in connection.execute(statement):
        classes.setdefault(study_pk, []).append(sop_class)
    for row in rows:
        if row.study_pk is not None:
            row.computed[SOP_CLASSES_IN_STUDY] = sorted(classes.get(row.study_pk, []))
