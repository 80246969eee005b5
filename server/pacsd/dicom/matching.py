"""C-FIND key matching (PS3.4 C.2.2.2): identifier keys parsed into matchers, checked on records.

A matcher is parsed once per request from one identifier element and decides, for a stored
record, whether the key matches. The index translates the matchers it can into SQL to narrow the
candidates (index/query.py); the matchers here are the authority and run on every candidate, so
a key with no SQL column is still matched correctly. Stored values come from the instance header
kept in the DICOM JSON model (PS3.18 F.2), already decoded from their character set, so an
identifier in ISO_IR 100 and one in ISO_IR 192 match the same stored values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

# PS3.4 C.2.2.2.4: wild card matching applies to these VRs only.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
NUMERIC_VRS = frozenset({"IS", "DS", "SL", "SS", "UL", "US", "FL", "FD", "SV", "UV"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class Record(Protocol):
    """A stored entity as the matchers see it: values and sequence items by tag."""

    def values(self, tag: int) -> list[str]:
        """The attribute's values as text ([] when absent or empty)."""

    def items(self, tag: int) -> list[Record]:
        """The items of a sequence attribute ([] when absent)."""


class Matcher(Protocol):
    """One key's matching rule."""

    @property
    def tag(self) -> int:
        """The attribute the rule applies to."""

    def matches(self, record: Record) -> bool:
        """True when the record matches this key."""


@dataclass(frozen=True)
class MatchOptions:
    """Choices PS3.4 leaves to the SCP."""

    # C.2.2.2.1: PN literal matching may be case-sensitive or insensitive; the default is exact.
    person_name_case_insensitive: bool = False


@dataclass(frozen=True)
class ValueMatcher:
    """Single value, list of UIDs, multiple values and wild card matching (C.2.2.2.1-4, .8).

    The key matches when any stored value matches any of the key's values; each key value is a
    literal or, where it holds `*` or `?` on a VR that allows them, a pattern.
    """

    tag: int
    vr: str
    literals: tuple[str, ...]
    patterns: tuple[str, ...]
    case_insensitive: bool = False
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        flags = re.DOTALL | (re.IGNORECASE if self.case_insensitive else 0)
        compiled = tuple(re.compile(wildcard_regex(p), flags) for p in self.patterns)
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, record: Record) -> bool:
        return any(self._matches_value(value) for value in record.values(self.tag))

    def _matches_value(self, stored: str) -> bool:
        for candidate in _comparable_forms(stored, self.vr):
            if any(
                _literal_equal(candidate, lit, self.vr, self.case_insensitive)
                for lit in self.literals
            ):
                return True
            if any(regex.fullmatch(candidate) for regex in self._compiled):
                return True
        return False


@dataclass(frozen=True)
class RangeMatcher:
    """Range matching on DA, TM and DT, open ranges included (C.2.2.2.5).

    `low` and `high` are normalized (see normalize_bound); a stored value is normalized the
    same way and compared as text, which orders correctly because every form is fixed-width.
    """

    tag: int
    vr: str
    low: str
    high: str

    def matches(self, record: Record) -> bool:
        return any(
            self.low <= normalize_value(value, self.vr) <= self.high
            for value in record.values(self.tag)
        )


@dataclass(frozen=True)
class DateTimeRangeMatcher:
    """Combined date and time range matching.

    PS3.4 C.2.2.2.5: when a date and its time attribute (e.g. Study Date and Study Time) both
    carry a range, they are matched as one date-time range: 20060705-20060707 with 1000-1800
    means from July 5 at 10:00 to July 7 at 18:00, not 10:00-18:00 on each day.
    """

    tag: int  # the date attribute
    time_tag: int
    low: str
    high: str

    def matches(self, record: Record) -> bool:
        dates = record.values(self.tag)
        if not dates:
            return False
        times = record.values(self.time_tag) or [""]
        stamp = normalize_value(dates[0], "DA") + normalize_value(times[0], "TM")
        return self.low <= stamp <= self.high


@dataclass(frozen=True)
class SequenceMatcher:
    """Sequence matching (C.2.2.2.6): any stored item matches every key of the query item."""

    tag: int
    item: tuple[Matcher, ...]

    def matches(self, record: Record) -> bool:
        return any(
            all(matcher.matches(item) for matcher in self.item) for item in record.items(self.tag)
        )


@dataclass(frozen=True)
class Key:
    """One element of a C-FIND identifier: what to return, and how to match it.

    `matcher` is None for universal matching (zero-length value, C.2.2.2.3) and for a key pacsd
    cannot match on (`supported` False: it is returned, and the response status is 0xFF01).
    `item_keys` are the keys of a sequence's query item, for building the returned items.
    """

    tag: int
    vr: str
    matcher: Matcher | None = None
    supported: bool = True
    item_keys: tuple[Key, ...] = ()

    @property
    def keyword(self) -> str:
        """The DICOM keyword, or the tag in hex for private and unknown attributes."""
        return keyword_for_tag(self.tag) or f"{self.tag:08X}"


def wildcard_regex(pattern: str) -> str:
    """PS3.4 C.2.2.2.4: `*` matches any sequence of characters, `?` any single one."""
    return "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )


def _literal_equal(stored: str, literal: str, vr: str, case_insensitive: bool) -> bool:
    if vr in NUMERIC_VRS:
        try:
            return float(stored) == float(literal)
        except ValueError:
            return stored == literal
    if case_insensitive:
        return stored.casefold() == literal.casefold()
    return stored == literal


def _comparable_forms(stored: str, vr: str) -> tuple[str, ...]:
    """A PN matches on its whole value or on its alphabetic component group (PS3.5 6.2)."""
    if vr == "PN" and "=" in stored:
        return (stored, stored.split("=", 1)[0])
    return (stored,)


_DT_LOW_FILL = "00000000000000.000000"
_DT_HIGH_FILL = "99999999999999.999999"
_TM_LOW_FILL = "000000.000000"
_TM_HIGH_FILL = "235959.999999"
_OFFSET = re.compile(r"[+-]\d{4}$")


def _fixed(text: str, fill: str) -> str:
    """`text` padded on the right with the rest of `fill` (same width as `fill`)."""
    if "." not in text and len(text) > fill.index("."):
        text = text[: fill.index(".")]
    return text + fill[len(text) :] if len(text) < len(fill) else text[: len(fill)]


def normalize_value(value: str, vr: str) -> str:
    """A stored DA, TM or DT as fixed-width text; partial values are padded with zeros.

    DA in the ACR-NEMA form YYYY.MM.DD and TM in HH:MM:SS (both retired) are read too. DT
    time zone offsets are not applied: values are compared as local date-times.
    """
    value = value.strip()
    if vr == "DA":
        return value.replace(".", "")[:8].ljust(8, "0")
    if vr == "TM":
        return _fixed(value.replace(":", ""), _TM_LOW_FILL)
    return _fixed(_OFFSET.sub("", value), _DT_LOW_FILL)


def normalize_bound(value: str, vr: str, high: bool) -> str:
    """A range bound as fixed-width text; a partial upper bound covers its whole span."""
    value = value.strip()
    if vr == "DA":
        digits = value.replace(".", "")
        return digits.ljust(8, "9" if high else "0")[:8] if digits else ("99999999" if high else "")
    if vr == "TM":
        fill = _TM_HIGH_FILL if high else _TM_LOW_FILL
        return _fixed(value.replace(":", ""), fill) if value else ("~" if high else "")
    fill = _DT_HIGH_FILL if high else _DT_LOW_FILL
    return _fixed(_OFFSET.sub("", value), fill) if value else ("~" if high else "")


_RANGE_PART = {
    "DA": re.compile(r"^\d{4}\.?\d{0,2}\.?\d{0,2}$"),
    "TM": re.compile(r"^\d{2}(:?\d{2}){0,2}(\.\d{1,6})?$"),
    "DT": re.compile(r"^\d{4,14}(\.\d{1,6})?([+-]\d{4})?$"),
}


def _range_bounds(value: str, vr: str) -> tuple[str, str] | None:
    """(low, high) of a range key value, or None when it is not a well-formed range."""
    if value.count("-") != 1 or (vr == "DT" and _OFFSET.search(value)):
        return None
    low, high = (part.strip() for part in value.split("-"))
    if not all(_RANGE_PART[vr].match(part) for part in (low, high) if part):
        return None
    return normalize_bound(low, vr, high=False), normalize_bound(high, vr, high=True)


def element_values(element: DataElement) -> list[str]:
    """An identifier element's values as text, pydicom having decoded its character set."""
    value = element.value
    if value is None or value == "" or value == b"":
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip() for v in values if str(v).strip() != ""] or []


def _universal(values: Sequence[str]) -> bool:
    # C.2.2.2.3 zero length; a lone `*` (C.2.2.2.4) or `-` (C.2.2.2.5) matches everything too.
    return not values or (len(values) == 1 and values[0] in ("*", "-"))


def parse_key(element: DataElement, options: MatchOptions) -> Key:
    """The Key for one identifier element."""
    tag, vr = int(element.tag), str(element.VR)
    if vr == "SQ":
        return _sequence_key(element, options)
    values = element_values(element)
    if vr in BINARY_VRS:
        return Key(tag, vr, supported=not values)
    if _universal(values):
        return Key(tag, vr)
    if vr in RANGE_VRS and len(values) == 1 and "-" in values[0]:
        bounds = _range_bounds(values[0], vr)
        if bounds is None:
            return Key(tag, vr, supported=False)
        return Key(tag, vr, RangeMatcher(tag, vr, *bounds))
    return _value_key(tag, vr, values, options)


def _value_key(tag: int, vr: str, values: list[str], options: MatchOptions) -> Key:
    wild = [v for v in values if "*" in v or "?" in v]
    if wild and vr not in WILDCARD_VRS:
        return Key(tag, vr, supported=False)  # C.2.2.2.4: no wild cards on this VR
    literals = tuple(v for v in values if v not in wild)
    insensitive = vr == "PN" and options.person_name_case_insensitive
    return Key(tag, vr, ValueMatcher(tag, vr, literals, tuple(wild), insensitive))


def _sequence_key(element: DataElement, options: MatchOptions) -> Key:
    tag = int(element.tag)
    items: list[Dataset] = list(element.value or [])
    if len(items) > 1:
        return Key(tag, "SQ", supported=False)  # C.2.2.2.6: the query holds at most one item
    # Date and time inside the item combine too (C.2.2.2.5: Scheduled Procedure Step Start
    # Date and Time in a worklist query's Scheduled Procedure Step Sequence).
    item_keys = (
        tuple(combine_date_time([parse_key(item_element, options) for item_element in items[0]]))
        if items
        else ()
    )
    matchers = tuple(key.matcher for key in item_keys if key.matcher is not None)
    supported = all(key.supported for key in item_keys)
    matcher = SequenceMatcher(tag, matchers) if matchers else None
    return Key(tag, "SQ", matcher, supported, item_keys)


def combine_date_time(keys: Sequence[Key]) -> list[Key]:
    """Merge each date range with its time range into one date-time range (C.2.2.2.5)."""
    by_tag = {key.tag: key for key in keys}
    combined: dict[int, Key] = {}
    for key in keys:
        pair = DATE_TIME_PAIRS.get(key.tag)
        if pair is None or not isinstance(key.matcher, RangeMatcher):
            continue
        time_key = by_tag.get(pair)
        if time_key is None or not isinstance(time_key.matcher, RangeMatcher):
            continue
        matcher = _date_time_matcher(key.matcher, time_key.matcher)
        combined[key.tag] = Key(key.tag, key.vr, matcher)
        combined[pair] = Key(pair, time_key.vr)  # returned, matched through the date key
    return [combined.get(key.tag, key) for key in keys]


def _date_time_matcher(date: RangeMatcher, time: RangeMatcher) -> DateTimeRangeMatcher:
    # An open end of the date range stays open; the time bound applies at the date bound.
    low = date.low + time.low if date.low else ""
    high = date.high + (time.high if time.high != "~" else _TM_HIGH_FILL)
    if date.high == "99999999":
        high = "~"
    return DateTimeRangeMatcher(date.tag, time.tag, low, high)


def _pairs() -> dict[int, int]:
    names = (
        "Study", "Series", "Acquisition", "Content", "InstanceCreation",
        "PerformedProcedureStepStart", "ScheduledProcedureStepStart",
    )  # fmt: skip
    return {int(Tag(f"{name}Date")): int(Tag(f"{name}Time")) for name in names}


DATE_TIME_PAIRS: Mapping[int, int] = _pairs()


def parse_identifier(
    identifier: Dataset, options: MatchOptions, skip: Sequence[int] = ()
) -> list[Key]:
    """Every key of a C-FIND identifier (group 0x0008 0005 and `skip` tags excluded)."""
    keys = [
        parse_key(element, options)
        for element in identifier
        if int(element.tag) not in skip and int(element.tag) != 0x00080005
    ]
    return combine_date_time(keys)


class JsonRecord:
    """A Record over a header in the DICOM JSON model, with computed values on top."""

    def __init__(
        self, header: Mapping[str, Any], computed: Mapping[int, list[str]] | None = None
    ) -> None:
        self.header = header
        self.computed = computed or {}

    def values(self, tag: int) -> list[str]:
        if tag in self.computed:
            return self.computed[tag]
        element = self.header.get(f"{tag:08X}")
        return json_values(element) if element else []

    def items(self, tag: int) -> list[Record]:
        element = self.header.get(f"{tag:08X}")
        if not element or element.get("vr") != "SQ":
            return []
        return [JsonRecord(item) for item in element.get("Value", []) if isinstance(item, dict)]


def json_values(element: Mapping[str, Any]) -> list[str]:
    """The values of a DICOM JSON element as text; a PN as its groups joined by `=`."""
    text: Callable[[Any], str] = _person_name if element.get("vr") == "PN" else str
    return [text(value).strip() for value in element.get("Value", []) if value is not None]


def _person_name(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    groups = [value.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")
