"""The DICOM JSON model of raw data elements, for the VRs that make up most of a header.

A stored instance's header becomes DICOM JSON once per C-STORE (dicom/header.py). pydicom makes
a DataElement of each raw element and then its JSON, about 6 us an element in all; this module
turns the raw bytes of the common VRs straight into what pydicom's `to_json_dict` gives for them
(PS3.18 F.2; the same value conversions as pydicom.values, with validation off, as the server
runs), several times faster. `element_json` returns None for anything it does not handle (a
person name, a sequence, an ambiguous or private VR, another character set, a value it cannot
convert): the caller then asks pydicom. tests/unit/test_fastjson.py holds every converted
element to pydicom's own result, over pydicom's test files and pacsd's generated data.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

BULK_DATA_THRESHOLD = 1024  # binary values above this are bulk data (dicom/header.py)
_DEFAULT = "iso8859"  # pydicom's default_encoding (latin-1)
# Specific Character Sets whose text decodes with one codec, no ISO 2022 code extensions.
SIMPLE_CHARSETS = {term: python_encoding[term] for term in ("ISO_IR 6", "ISO_IR 100", "ISO_IR 192")}
_NUMBERS = {
    "US": ("H", 2, int),
    "SS": ("h", 2, int),
    "UL": ("L", 4, int),
    "SL": ("l", 4, int),
    "UV": ("Q", 8, int),
    "SV": ("q", 8, int),
    "FL": ("f", 4, float),
    "FD": ("d", 8, float),
}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_STRINGS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # pydicom.values.convert_string
_TEXT_MULTI = frozenset({"SH", "LO", "UC"})  # convert_text: the character set applies
_TEXT_SINGLE = frozenset({"ST", "LT", "UT"})  # convert_single_string
_vr_cache: dict[int, str | None] = {}


def vr_of(raw: RawDataElement) -> str | None:
    """The element's VR: explicit, or the public dictionary's (None: private or unknown, or
    UN, which pydicom replaces by the dictionary's VR when it knows the tag)."""
    if raw.VR is not None:
        return None if raw.VR == "UN" else str(raw.VR)
    return dictionary_vr(int(raw.tag))


def dictionary_vr(tag: int) -> str | None:
    """The public dictionary's VR of `tag` (None: private or unknown; cached)."""
    if tag in _vr_cache:
        return _vr_cache[tag]
    vr: str | None = None
    if (tag >> 16) % 2 == 0:  # private groups are odd: their VR needs the private creator
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = None
    _vr_cache[tag] = vr
    return vr


def element_json(raw: RawDataElement, text_codec: str | None) -> dict[str, Any] | None:
    """The JSON of `raw` (a little endian element), or None: ask pydicom."""
    value = raw.value
    vr = vr_of(raw)
    if vr is None or not isinstance(value, bytes):
        return None
    return value_json(vr, value, text_codec)


def value_json(vr: str, value: bytes, text_codec: str | None) -> dict[str, Any] | None:
    """The JSON of a little endian value of `vr` (UN: not here), or None: ask pydicom."""
    if not value:
        return {"vr": vr} if vr in _SIMPLE_EMPTY else None
    try:
        return _convert(vr, value, text_codec)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None  # pydicom decides (it may warn, replace or leave the element out)


def _convert(vr: str, value: bytes, text_codec: str | None) -> dict[str, Any] | None:
    if vr == "UI":  # convert_UI: trailing NULs and spaces, then split
        return _values(vr, value.decode(_DEFAULT).rstrip("\0 ").split("\\"))
    if vr in _STRINGS:  # multi_string
        return _values(vr, value.decode(_DEFAULT).rstrip(" \0").split("\\"))
    if vr == "AE":  # convert_AE_string: leading and trailing spaces are not significant
        return _values(vr, [part.strip() for part in value.decode(_DEFAULT).split("\\")])
    if vr in _TEXT_MULTI:
        if text_codec is None:
            return None
        parts = value.decode(text_codec).split("\\")
        return _values(vr, [part.rstrip("\0 ") for part in parts])
    if vr in _TEXT_SINGLE:
        if text_codec is None:
            return None
        return _values(vr, [value.decode(text_codec).rstrip("\0 ")])
    if vr == "UR":
        return _values(vr, [value.decode(_DEFAULT).rstrip()])
    if vr == "IS":
        return _numbers(vr, value, _integer_string)
    if vr == "DS":
        return _numbers(vr, value, float)
    if vr in _NUMBERS:
        code, size, kind = _NUMBERS[vr]
        count = len(value) // size
        if count * size != len(value) or not count:
            return None
        numbers = struct.unpack(f"<{count}{code}", value)
        return {"vr": vr, "Value": [kind(number) for number in numbers]}
    if vr == "AT":
        if len(value) % 4:
            return None
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        tags = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
        return {"vr": vr, "Value": tags}
    if vr in _BINARY and len(value) <= BULK_DATA_THRESHOLD:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}
    return None


# Empty elements of these VRs have no value in the JSON model (pydicom: VM 0).
_SIMPLE_EMPTY = frozenset(
    {
        "UI",
        "AE",
        "UR",
        "IS",
        "DS",
        "AT",
        *_STRINGS,
        *_TEXT_MULTI,
        *_TEXT_SINGLE,
        *_NUMBERS,
        *_BINARY,
    }
)


def _values(vr: str, parts: list[str]) -> dict[str, Any]:
    """A string element: one empty value means no value (VM 0), as pydicom counts it."""
    if len(parts) == 1 and not parts[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": parts}


def _numbers(vr: str, value: bytes, convert: Any) -> dict[str, Any] | None:
    parts = value.decode(_DEFAULT).rstrip(" \0").split("\\")
    if len(parts) == 1 and not parts[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": [convert(part) for part in parts]}


def _integer_string(text: str) -> int:
    """pydicom's IS: an integer, or a float string without a fraction ("1.0")."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(text) from None
        return int(number)


def person_name_json(value: bytes, codec: str) -> dict[str, Any] | None:
    """The JSON of a PN value under a one-codec character set, as pydicom's convert_PN and
    `to_json_dict` make it (PS3.18 F.2.2: the components by name, trailing empty ones left
    out); None where pydicom decides (a value it cannot decode, or one with no component,
    which pydicom cannot convert either)."""
    try:
        text = value.rstrip(b"\0 ").decode(codec)
    except UnicodeDecodeError:
        return None
    if not text:
        return {"vr": "PN"}
    names: list[dict[str, str]] = []
    for name in text.split("\\"):
        components = name.split("=")
        while components and not components[-1]:
            components.pop()
        if not components:
            return None
        names.append(dict(zip(_PN_COMPONENTS, components[:3], strict=False)))
    return {"vr": "PN", "Value": names}


_PN_COMPONENTS = ("Alphabetic", "Ideographic", "Phonetic")


def text_codec(specific_character_set: bytes | None) -> str | None:
    """The codec of the text VRs under a Specific Character Set (0008,0005) raw value, or
    None when pydicom must decode them (code extensions, several terms, unknown term)."""
    if not specific_character_set:
        return _DEFAULT
    terms = [term.strip() for term in specific_character_set.decode(_DEFAULT).split("\\")]
    if len(terms) != 1:
        return None
    return _DEFAULT if not terms[0] else SIMPLE_CHARSETS.get(terms[0])
