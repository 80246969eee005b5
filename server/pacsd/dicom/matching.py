"""C-FIND key matching (PS3.4 C.2.2.2): identifier keys parsed into matchers, checked on records.

A matcher is parsed once per request from one identifier element and decides, for a stored
record, whether the key matches. The index translates the matchers it can into SQL to narrow the
candidates (index/query.py); the matchers here are the authority and run on every candidate, so
a key with no SQL column is still matched correctly. Stored values come from the instance header
kept in the DICOM JSON model (PS3.18 F.2), already decoded from their character set, so an
identifier in ISO_IR 100 and one in ISO_IR 192 match the same stored values.

What a requester negotiated (PS3.4 C.5.1.1, K.5.1) changes the matchers through MatchOptions
(combined date-time ranges, fuzzy person names) and the records through ZonedRecord (timezone
query adjustment); relational-queries only change which identifiers are accepted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, keyword_for_tag
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
    """Choices PS3.4 leaves to the SCP, and the options a requestor negotiated (C.5.1.1)."""

    # C.2.2.2.1.1: PN literal matching may be case-sensitive or insensitive; the default is exact.
    person_name_case_insensitive: bool = False
    # C.2.2.2.1.1: fuzzy semantic matching of person names (see PersonNameMatcher).
    fuzzy_person_names: bool = False
    # C.2.2.2.5: a date range and the range of its time attribute match as one date-time range;
    # without it (the Q/R default) each matches on its own.
    combined_date_time: bool = False


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
        if self.vr in RANGE_VRS:  # C.2.2.2.1.3: by meaning, "2230" is "223000"
            value = normalize_value(stored, self.vr)
            return any(value == normalize_value(lit, self.vr) for lit in self.literals)
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
class PersonNameMatcher:
    """Fuzzy semantic matching of person names (PS3.4 C.2.2.2.1.1, when negotiated or when
    the policy rule asks for it): insensitive to case, accents and component order.

    Both names are folded (Unicode compatibility decomposition, combining marks dropped,
    case folded) and cut into words at "^", "=", spaces, commas and periods. A key value
    matches when each of its words matches a different word of the stored name, in any order
    and in any component group; `*` and `?` are wild cards inside a word (C.2.2.2.4). So
    "smith", "SMITH^JOHN", "john smith", "Jöhn^Sm*" and "Smith, John" all match "Smith^John",
    while "smi" and "John^Smithers" do not. A key value whose whole folded text matches the
    whole folded name (wild cards spanning components, "Smi*Jo*") also matches.
    """

    tag: int
    values: tuple[str, ...]
    _words: tuple[tuple[re.Pattern[str], ...], ...] = field(init=False, repr=False, compare=False)
    _whole: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A word that is only "*" may match nothing at all ("Doe^*" matches "Doe"): dropped.
        words = tuple(
            tuple(
                re.compile(wildcard_regex(word), re.DOTALL)
                for word in name_words(value)
                if word.strip("*")
            )
            for value in self.values
        )
        whole = tuple(
            re.compile(wildcard_regex(fold_name(value)), re.DOTALL) for value in self.values
        )
        object.__setattr__(self, "_words", words)
        object.__setattr__(self, "_whole", whole)

    def matches(self, record: Record) -> bool:
        for stored in record.values(self.tag):
            folded, words = fold_name(stored), name_words(stored)
            groups = [fold_name(group) for group in stored.split("=")]
            for patterns, whole in zip(self._words, self._whole, strict=True):
                if _assign(patterns, words):
                    return True
                if any(whole.fullmatch(text) for text in (folded, *groups)):
                    return True
        return False


_NAME_SEPARATORS = re.compile(r"[\^=\s,.]+")


def fold_name(text: str) -> str:
    """A name without case, accents or compatibility variants (full-width letters, ligatures)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return unicodedata.normalize("NFC", stripped.casefold())


def name_words(text: str) -> tuple[str, ...]:
    """The folded words of a person name (or of a key value, wild cards kept)."""
    return tuple(word for word in _NAME_SEPARATORS.split(fold_name(text)) if word)


def _assign(patterns: Sequence[re.Pattern[str]], words: Sequence[str]) -> bool:
    """True when each pattern matches a different word (a small bipartite matching)."""
    owner: dict[int, int] = {}  # word index -> pattern index

    def place(pattern: int, seen: set[int]) -> bool:
        for index, word in enumerate(words):
            if index in seen or not patterns[pattern].fullmatch(word):
                continue
            seen.add(index)
            if index not in owner or place(owner[index], seen):
                owner[index] = pattern
                return True
        return False

    return all(place(pattern, set()) for pattern in range(len(patterns)))


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
    if vr == "PN" and options.fuzzy_person_names:
        return Key(tag, vr, PersonNameMatcher(tag, tuple(values)))
    literals = tuple(v for v in values if v not in wild)
    insensitive = vr == "PN" and options.person_name_case_insensitive
    return Key(tag, vr, ValueMatcher(tag, vr, literals, tuple(wild), insensitive))


def _sequence_key(element: DataElement, options: MatchOptions) -> Key:
    tag = int(element.tag)
    items: list[Dataset] = list(element.value or [])
    if len(items) > 1:
        return Key(tag, "SQ", supported=False)  # C.2.2.2.6: the query holds at most one item
    # Date and time inside the item combine too (C.2.2.2.5; K.6.1.2.2: Scheduled Procedure
    # Step Start Date and Time in a worklist query's Scheduled Procedure Step Sequence).
    item_keys = (
        tuple(_combined([parse_key(item_element, options) for item_element in items[0]], options))
        if items
        else ()
    )
    matchers = tuple(key.matcher for key in item_keys if key.matcher is not None)
    supported = all(key.supported for key in item_keys)
    matcher = SequenceMatcher(tag, matchers) if matchers else None
    return Key(tag, "SQ", matcher, supported, item_keys)


def _combined(keys: list[Key], options: MatchOptions) -> list[Key]:
    return combine_date_time(keys) if options.combined_date_time else keys


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
        "Study", "Series", "Acquisition", "Content", "InstanceCreation", "PatientBirth",
        "PerformedProcedureStepStart", "ScheduledProcedureStepStart",
    )  # fmt: skip
    return {int(Tag(f"{name}Date")): int(Tag(f"{name}Time")) for name in names}


DATE_TIME_PAIRS: Mapping[int, int] = _pairs()


def parse_identifier(
    identifier: Dataset,
    options: MatchOptions,
    skip: Sequence[int] = (),
    unmatched: Sequence[int] = (),
) -> list[Key]:
    """Every key of a C-FIND identifier (group 0x0008 0005 and `skip` tags excluded);
    `unmatched` tags are returned but never matched (Timezone Offset From UTC, C.2.2.2)."""
    keys = [
        Key(int(element.tag), str(element.VR))
        if int(element.tag) in unmatched
        else parse_key(element, options)
        for element in identifier
        if int(element.tag) not in skip and int(element.tag) != 0x00080005
    ]
    return _combined(keys, options)


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


TIMEZONE_OFFSET_FROM_UTC = int(Tag("TimezoneOffsetFromUTC"))
_TIMES_OF_DATES: Mapping[int, int] = {time: date for date, time in DATE_TIME_PAIRS.items()}
_OFFSET_VALUE = re.compile(r"^([+-])(\d{2})(\d{2})$")
_DAY_US = 86_400_000_000


def utc_offset_minutes(value: str) -> int | None:
    """A Timezone Offset From UTC value ("+0100", "-0500") in minutes; None when malformed."""
    match = _OFFSET_VALUE.match(value.strip())
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes)
    if total > 14 * 60:
        return None
    return -total if sign == "-" else total


class ZonedRecord:
    """A Record whose dates, times and date-times read in another timezone (PS3.4
    C.2.2.2.1.3, timezone query adjustment).

    Each value is taken in the stored entity's own Timezone Offset From UTC (0008,0201) (a DT
    with its own offset suffix, in that one) and moved to `zone` minutes east of UTC: a date
    together with its time attribute (Study Date with Study Time, ...), a time modulo a day,
    a DT whole. A date without its time, and any value of an entity that gives no offset,
    read as they are (taken to be in the requester's timezone already). Sequence items
    inherit the entity's offset.
    """

    def __init__(self, record: Record, zone: int, offset: int | None) -> None:
        self.record = record
        self.zone = zone
        self.offset = offset

    @classmethod
    def of(cls, record: Record, zone: int) -> ZonedRecord:
        """`record` read at `zone` minutes east of UTC, from its own Timezone Offset From UTC."""
        values = record.values(TIMEZONE_OFFSET_FROM_UTC)
        return cls(record, zone, utc_offset_minutes(values[0]) if values else None)

    def values(self, tag: int) -> list[str]:
        values = self.record.values(tag)
        if self.offset is None and _vr(tag) != "DT":
            return values
        if tag in DATE_TIME_PAIRS:
            times = self.record.values(DATE_TIME_PAIRS[tag])
            return values if not times else [self._date(value, times[0]) for value in values]
        if tag in _TIMES_OF_DATES:
            return [self._time(value) for value in values]
        if _vr(tag) == "DT":
            return [self._date_time(value) for value in values]
        return values

    def items(self, tag: int) -> list[Record]:
        return [ZonedRecord(item, self.zone, self.offset) for item in self.record.items(tag)]

    def _shift(self, own: int | None) -> int:
        return 0 if own is None else (self.zone - own) * 60_000_000

    def _date(self, date: str, time: str) -> str:
        moved = _moved(
            normalize_value(date, "DA") + normalize_value(time, "TM"), self._shift(self.offset)
        )
        return moved[:8] if moved else date

    def _time(self, time: str) -> str:
        text = normalize_value(time, "TM")
        try:
            micros = (int(text[:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])) * 1_000_000
            micros = (micros + int(text[7:13]) + self._shift(self.offset)) % _DAY_US
        except ValueError:
            return time
        seconds, fraction = divmod(micros, 1_000_000)
        return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{fraction:06d}"

    def _date_time(self, value: str) -> str:
        suffix = _OFFSET.search(value.strip())
        own = utc_offset_minutes(suffix.group()) if suffix else self.offset
        moved = _moved(normalize_value(value, "DT"), self._shift(own))
        return moved if moved else value


def _moved(stamp: str, shift_us: int) -> str:
    """A fixed-width date-time (YYYYMMDDHHMMSS.FFFFFF) moved by `shift_us`; "" when invalid."""
    try:
        instant = datetime.strptime(stamp, "%Y%m%d%H%M%S.%f")
    except ValueError:
        return ""
    return (instant + timedelta(microseconds=shift_us)).strftime("%Y%m%d%H%M%S.%f")


@cache
def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""
