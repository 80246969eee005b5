"""SQL conditions that narrow a matching key (dicom/matching.py) on an index column.

A condition is planned first, as plain data: its shape (which SQL operators, how many
alternatives) and the values it binds. The SQL is built from the shape alone, so one built
statement serves every query of that shape with new values (index/query.py caches them:
building and cache-keying a SQLAlchemy statement cost more than running it on a small
archive). `column_condition` builds with the values in place, for the worklist and UPS.

Each condition selects a superset of the key's matches: the matchers decide on the stored
header afterwards (SQLite's LIKE ignores ASCII case, for instance).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, false, or_
from sqlalchemy.orm import InstrumentedAttribute

from pacsd.dicom.matching import DateTimeRangeMatcher, Key, RangeMatcher, ValueMatcher

LIKE_ESCAPE = "!"
# Shapes: ("in",) a list; ("range", with_high) dates; ("like", op, name_op) a value and, with
# a name_op, the pattern of the alphabetic group; ("or", shapes); ("false",).
Shape = tuple[Any, ...]


@dataclass(frozen=True)
class Plan:
    """A condition's shape and the values it binds, in the order the shape uses them."""

    shape: Shape
    values: tuple[Any, ...]


def column_condition(
    column: InstrumentedAttribute[Any], key: Key, widen_days: int = 0
) -> ColumnElement[bool] | None:
    """A SQL condition on `column` selecting a superset of the key's matches, or None;
    `widen_days` widens date conditions by that many days on each side."""
    plan = plan_condition(column, key, widen_days)
    return None if plan is None else build(plan.shape, column, iter(plan.values))


def plan_condition(
    column: InstrumentedAttribute[Any], key: Key, widen_days: int = 0
) -> Plan | None:
    """The plan of `column_condition`, or None (no narrowing)."""
    matcher = key.matcher
    if isinstance(matcher, ValueMatcher):
        if matcher.vr == "DA" and widen_days:
            dates = sorted(matcher.literals)
            return _date_range(*_widened(dates[0], dates[-1], widen_days)) if dates else None
        return _value_condition(column, matcher)
    if isinstance(matcher, RangeMatcher) and matcher.vr == "DA":
        return _date_range(*_widened(matcher.low, matcher.high, widen_days))
    if isinstance(matcher, DateTimeRangeMatcher):
        return _date_range(*_widened(matcher.low[:8], matcher.high[:8], widen_days))
    return None  # TM and DT ranges, sequences, fuzzy names: checked on the header only


def build(
    shape: Shape, column: Any, values: Iterator[Any], names: Iterator[str] | None = None
) -> ColumnElement[bool]:
    """The SQL of `shape` on `column`: with `names`, each value is a bind parameter of that
    name (`values` then only counts them); without, the values are in place."""

    def bound(expanding: bool = False) -> Any:
        value = next(values)
        return value if names is None else bindparam(next(names), expanding=expanding)

    kind = shape[0]
    if kind == "in":
        return column.in_(bound(expanding=True))  # type: ignore[no-any-return]
    if kind == "range":
        conditions = [column != "", column >= bound()]
        if shape[1]:
            conditions.append(column <= bound())
        return and_(*conditions)
    if kind == "like":
        clause = _operator(column, shape[1], bound())
        if shape[2] is not None:  # the alphabetic group alone may match (dicom/matching.py)
            clause = or_(clause, _operator(column, shape[2], bound()))
        return clause
    if kind == "or":
        return or_(*(build(part, column, values, names) for part in shape[1]))
    return false()


def _operator(column: Any, operator: str, value: Any) -> ColumnElement[bool]:
    if operator == "ilike":
        return column.ilike(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
    if operator == "like":
        return column.like(value, escape=LIKE_ESCAPE)  # type: ignore[no-any-return]
    return column == value  # type: ignore[no-any-return]


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


def _date_range(low: str, high: str) -> Plan:
    if high in ("~", "99999999"):
        return Plan(("range", False), (low,))
    return Plan(("range", True), (low, high))


def _value_condition(column: InstrumentedAttribute[Any], matcher: ValueMatcher) -> Plan | None:
    if column.type.python_type is int:
        numbers = [_integer(value) for value in matcher.literals]
        if matcher.patterns or None in numbers:
            return None
        return Plan(("in",), (numbers,))
    shapes: list[Shape] = []
    values: list[Any] = []
    plain = not matcher.case_insensitive and matcher.vr != "PN"
    if plain and matcher.literals:
        # One IN, not an OR per value: SQLite refuses an expression tree deeper than 1000,
        # and a C-MOVE may list thousands of UIDs.
        shapes.append(("in",))
        values.append(list(matcher.literals))
    for value in matcher.patterns if plain else matcher.literals + matcher.patterns:
        like = _like(matcher, value)
        if like is None:
            return None
        shapes.append(like.shape)
        values.extend(like.values)
    if not shapes:
        return Plan(("false",), ())
    return Plan(("or", tuple(shapes)), tuple(values))


def _like(matcher: ValueMatcher, value: str) -> Plan | None:
    wildcard = "*" in value or "?" in value
    pattern = _like_pattern(value) if wildcard else None
    if matcher.case_insensitive:
        if not value.isascii():
            return None  # SQLite's lower() only folds ASCII: leave this key to the matcher
        pattern = pattern or _like_pattern(value)
        operator, first = "ilike", pattern
    elif pattern is not None:
        operator, first = "like", pattern
    else:
        operator, first = "eq", value
    if matcher.vr == "PN":  # the alphabetic group alone may match (dicom/matching.py)
        group = (pattern or _like_pattern(value)) + "=%"
        name_operator = "ilike" if matcher.case_insensitive else "like"
        return Plan(("like", operator, name_operator), (first, group))
    return Plan(("like", operator, None), (first,))


def _like_pattern(value: str) -> str:
    escaped = "".join(f"{LIKE_ESCAPE}{c}" if c in "%_!" else c for c in value)
    return escaped.replace("*", "%").replace("?", "_")


def _integer(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None
