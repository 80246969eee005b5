"""C-GET and C-MOVE against the index: the instances a retrieve identifier selects.

A selection is fixed when it is counted (instances stored afterwards are not part of it) and
read back in batches by keyset pagination, so a retrieve of any size holds one batch of rows.
A small selection (a study, a series: at most FEW instances) is read whole by one statement
instead, its rows kept in the Selection. Every statement is Core, built once per shape of keys
(levels and their UID counts' expanding parameters) and run on a plain connection: for a C-MOVE
of one study, building ORM statements and sessions cost more than the queries themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    # Every selected row, when the selection was read whole (select_few_of_patient).
    rows: tuple[StoredInstance, ...] | None = field(default=None, compare=False)


FEW = 100  # a selection of at most this many instances is read by one statement

_Shape = tuple[Level, ...]  # the levels of a retrieve's keys, in order


def _shape(keys: Mapping[Level, Sequence[str]]) -> tuple[_Shape, dict[str, list[str]]]:
    """The keys' shape and their UIDs as the values of the expanding parameters k0, k1, ..."""
    return tuple(keys), {f"k{n}": list(values) for n, values in enumerate(keys.values())}


def _conditions(shape: _Shape) -> list[ColumnElement[bool]]:
    return [
        _KEY_COLUMNS[level].in_(bindparam(f"k{n}", expanding=True)) for n, level in enumerate(shape)
    ]


_Select = TypeVar("_Select", bound=Select[*tuple[Any, ...]])


def _joined(statement: _Select) -> _Select:
    return (
        statement.select_from(Instance)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .join(Patient, Study.patient_fk == Patient.pk)
    )


def select_instances(
    database: IndexDatabase, keys: Mapping[Level, Sequence[str]], whole_up_to: int = FEW
) -> Selection:
    """Count the instances `keys` select and note which SOP classes and syntaxes they use; a
    selection of at most `whole_up_to` instances is read whole, in one statement (0: never,
    for a caller that has just found it larger)."""
    few = select_few_of_patient(database, keys, whole_up_to) if whole_up_to else None
    if few is not None:
        return few[0]
    shape, values = _shape(keys)
    with database.reading_connection() as connection:
        count, last_pk = connection.execute(_count_statement(shape), values).one()
        pairs = connection.execute(_presentations_statement(shape), values)
        presentations = frozenset((str(a), str(b)) for a, b in pairs)
    return Selection(keys, int(count), int(last_pk or 0), presentations)


def stored_instances(
    database: IndexDatabase, selection: Selection, batch_size: int = 100
) -> Iterator[StoredInstance]:
    """The selected instances, in index order, one batch of rows at a time."""
    if selection.rows is not None:
        yield from selection.rows
        return
    shape, values = _shape(selection.keys)
    statement = _batch_statement(shape, batch_size)
    after = 0
    while after < selection.last_pk:
        with database.reading_connection() as connection:
            rows = connection.execute(
                statement, {**values, "after": after, "last": selection.last_pk}
            ).all()
        if not rows:
            return
        for row in rows:
            yield StoredInstance(*row)
        after = rows[-1].pk


@lru_cache(maxsize=32)
def _count_statement(shape: _Shape) -> Select[*tuple[Any, ...]]:
    return _joined(select(func.count(Instance.pk), func.max(Instance.pk))).where(
        *_conditions(shape)
    )


@lru_cache(maxsize=32)
def _presentations_statement(shape: _Shape) -> Select[*tuple[Any, ...]]:
    columns = select(Instance.sop_class_uid, Instance.transfer_syntax_uid)
    return _joined(columns).where(*_conditions(shape)).distinct()


@lru_cache(maxsize=32)
def _batch_statement(shape: _Shape, batch_size: int) -> Select[*tuple[Any, ...]]:
    columns = select(
        Instance.pk,
        Instance.sop_class_uid,
        Instance.sop_instance_uid,
        Instance.transfer_syntax_uid,
        Instance.file_path,
    )
    return (
        _joined(columns)
        .where(
            *_conditions(shape),
            Instance.pk > bindparam("after"),
            Instance.pk <= bindparam("last"),
        )
        .order_by(Instance.pk)
        .limit(batch_size)
    )


def select_few_of_patient(
    database: IndexDatabase, keys: Mapping[Level, Sequence[str]], limit: int
) -> tuple[Selection, str] | None:
    """The selection `keys` make, its rows kept in it, and the patient ID of its first
    instance ("" when none), in one statement, when it holds at most `limit` instances (a
    study or series); None when it holds more (use `select_instances`)."""
    shape, values = _shape(keys)
    with database.reading_connection() as connection:
        found = connection.execute(_few_statement(shape, limit), values).all()
    if len(found) > limit:
        return None
    rows = [StoredInstance(*row[:5]) for row in found]
    presentations = frozenset((row.sop_class_uid, row.transfer_syntax_uid) for row in rows)
    last_pk = rows[-1].pk if rows else 0
    patient_id = str(found[0][5] or "") if found else ""
    selection = Selection(keys, len(rows), last_pk, presentations, tuple(rows))
    return selection, patient_id


@lru_cache(maxsize=32)
def _few_statement(shape: _Shape, limit: int) -> Select[*tuple[Any, ...]]:
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
    return _joined(columns).where(*_conditions(shape)).order_by(Instance.pk).limit(limit + 1)
