"""C-GET and C-MOVE against the index: the instances a retrieve identifier selects.

A selection is fixed when it is counted (instances stored afterwards are not part of it) and
read back in batches by keyset pagination, so a retrieve of any size holds one batch of rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, func, select

from pacsd.dicom.qr_models import Level
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Patient, Series, Study

_KEY_COLUMNS = {
    Level.PATIENT: Patient.patient_id,
    Level.STUDY: Study.study_instance_uid,
    Level.SERIES: Series.series_instance_uid,
    Level.IMAGE: Instance.sop_instance_uid,
}


@dataclass(frozen=True)
class StoredInstance:
    """What sending one stored instance needs."""

    pk: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    file_path: str


@dataclass(frozen=True)
class Selection:
    """The instances a retrieve selected: their count, classes and syntaxes, and a bound."""

    keys: Mapping[Level, Sequence[str]]
    count: int
    last_pk: int
    presentations: frozenset[tuple[str, str]]  # (SOP class UID, transfer syntax UID)


def _conditions(keys: Mapping[Level, Sequence[str]]) -> list[ColumnElement[bool]]:
    return [_KEY_COLUMNS[level].in_(list(values)) for level, values in keys.items()]


_Select = TypeVar("_Select", bound=Select[*tuple[Any, ...]])


def _joined(statement: _Select) -> _Select:
    return (
        statement.select_from(Instance)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .join(Patient, Study.patient_fk == Patient.pk)
    )


def select_instances(database: IndexDatabase, keys: Mapping[Level, Sequence[str]]) -> Selection:
    """Count the instances `keys` select and note which SOP classes and syntaxes they use."""
    conditions = _conditions(keys)
    with database.reading() as session:
        count, last_pk = session.execute(
            _joined(select(func.count(Instance.pk), func.max(Instance.pk))).where(*conditions)
        ).one()
        pairs = session.execute(
            _joined(select(Instance.sop_class_uid, Instance.transfer_syntax_uid))
            .where(*conditions)
            .distinct()
        )
        presentations = frozenset((str(a), str(b)) for a, b in pairs)
    return Selection(keys, int(count), int(last_pk or 0), presentations)


def stored_instances(
    database: IndexDatabase, selection: Selection, batch_size: int = 100
) -> Iterator[StoredInstance]:
    """The selected instances, in index order, one batch of rows at a time."""
    columns = select(
        Instance.pk,
        Instance.sop_class_uid,
        Instance.sop_instance_uid,
        Instance.transfer_syntax_uid,
        Instance.file_path,
    )
    statement = _joined(columns).where(*_conditions(selection.keys))
    after = 0
    while after < selection.last_pk:
        with database.reading() as session:
            rows = session.execute(
                statement.where(Instance.pk > after, Instance.pk <= selection.last_pk)
                .order_by(Instance.pk)
                .limit(batch_size)
            ).all()
        if not rows:
            return
        for row in rows:
            yield StoredInstance(*row)
        after = rows[-1].pk


def select_few_of_patient(
    database: IndexDatabase, keys: Mapping[Level, Sequence[str]], limit: int
) -> tuple[Selection, list[StoredInstance], str] | None:
    """The selection `keys` make, its rows and the patient ID of its first instance ("" when
    none), in one statement, when it holds at most `limit` instances (a WADO-RS study or
    series); None when it holds more (use `select_instances`)."""
    levels = tuple((level, len(values)) for level, values in keys.items())
    values = {f"k{n}": list(v) for n, v in enumerate(keys.values())}
    with database.reading_connection() as connection:
        found = connection.execute(_few_statement(levels, limit), values).all()
    if len(found) > limit:
        return None
    rows = [StoredInstance(*row[:5]) for row in found]
    presentations = frozenset((row.sop_class_uid, row.transfer_syntax_uid) for row in rows)
    last_pk = rows[-1].pk if rows else 0
    patient_id = str(found[0][5] or "") if found else ""
    return Selection(keys, len(rows), last_pk, presentations), rows, patient_id


@lru_cache(maxsize=32)
def _few_statement(levels: tuple[tuple[Level, int], ...], limit: int) -> Select[*tuple[Any, ...]]:
    """The statement of `select_few_of_patient` for one shape of keys, its UIDs bound as
    expanding parameters k0, k1, ...: built and compiled once per shape, not per request."""
    columns = select(
        Instance.pk,
        Instance.sop_class_uid,
        Instance.sop_instance_uid,
        Instance.transfer_syntax_uid,
        Instance.file_path,
        Patient.patient_id,
    )
    conditions = [
        _KEY_COLUMNS[level].in_(bindparam(f"k{n}", expanding=True))
        for n, (level, _count) in enumerate(levels)
    ]
    return _joined(columns).where(*conditions).order_by(Instance.pk).limit(limit + 1)
