"""C-FIND response identifiers: every requested key, filled from the stored header.

PS3.4 C.4.1.1.3.2: a response carries each key of the request, with its stored value or zero
length when the entity has none, and nothing else. Values come from the header kept in the DICOM
JSON model; computed keys (counts, ModalitiesInStudy, SOPClassesInStudy) come with the match.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from pydicom.charset import python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pacsd.dicom.header_bytes import SPECIFIC_CHARACTER_SET
from pacsd.dicom.matching import JsonRecord, Key
from pacsd.dimse.messages import encode_flat, flat_syntax

UTF8 = "ISO_IR 192"
_COMPUTED_VR = {"00080061": "CS", "00080062": "UI"}


def response_json(
    keys: Sequence[Key], header: Mapping[str, Any], computed: Mapping[int, list[str]]
) -> dict[str, Any]:
    """The DICOM JSON of a response identifier for `keys` (before character set and level)."""
    document: dict[str, Any] = {}
    for key in keys:
        name = f"{key.tag:08X}"
        if key.tag in computed:
            document[name] = _computed_element(name, key.vr, computed[key.tag])
        elif key.vr == "SQ" and key.item_keys and name in header:
            document[name] = {"vr": "SQ", "Value": _items(key, header[name])}
        elif name in header:
            document[name] = header[name]
        else:
            document[name] = {"vr": key.vr}
    return document


def _computed_element(name: str, vr: str, values: list[str]) -> dict[str, Any]:
    vr = _COMPUTED_VR.get(name, "IS" if vr in ("", "UN") else vr)
    if not values:
        return {"vr": vr}
    return {"vr": vr, "Value": [int(v) for v in values] if vr == "IS" else list(values)}


def _items(key: Key, element: Mapping[str, Any]) -> list[dict[str, Any]]:
    """C.2.2.2.6: the stored items that match the query item, each with the item's keys."""
    matchers = [k.matcher for k in key.item_keys if k.matcher is not None]
    items = [item for item in element.get("Value", []) if isinstance(item, dict)]
    return [
        response_json(key.item_keys, item, {})
        for item in items
        if all(matcher.matches(JsonRecord(item)) for matcher in matchers)
    ]


def response_identifier(
    document: dict[str, Any], request_charset: Sequence[str], transfer_syntax: str
) -> Dataset | bytes:
    """The response identifier: already encoded in `transfer_syntax` when that is a little
    endian one and every element takes the raw shortcut below (no Dataset is made: that cost
    more than the rest of the response), else `response_dataset`'s Dataset."""
    charset = choose_charset(document, request_charset)
    implicit = flat_syntax(transfer_syntax)
    if implicit is not None:
        encoded = _encoded(document, charset, implicit)
        if encoded is not None:
            return encoded
    syntax = UID(transfer_syntax)
    return _dataset(document, charset, syntax.is_implicit_VR, syntax.is_little_endian)


def _encoded(document: dict[str, Any], charset: str | list[str], implicit: bool) -> bytes | None:
    """The bytes of `response_dataset(...)` written in a little endian syntax, or None when an
    element needs pydicom."""
    codec = _single_codec(charset)
    terms = charset if isinstance(charset, str) else "\\".join(charset)
    elements = [(SPECIFIC_CHARACTER_SET, "CS", _padded(terms, " "))]
    for name, element in document.items():
        tag = int(name, 16)
        if tag == SPECIFIC_CHARACTER_SET:
            continue  # the response's own, above
        value = _raw_value(element, codec)
        if value is None:
            return None
        elements.append((tag, element["vr"], value))
    elements.sort()
    return encode_flat(elements, implicit)


def response_dataset(
    document: dict[str, Any],
    request_charset: Sequence[str],
    implicit_vr: bool = True,
    little_endian: bool = True,
) -> Dataset:
    """The response Dataset, with a Specific Character Set that can encode its values.

    The request's character set is kept when it can encode every value (ASCII needs none);
    otherwise the response is in UTF-8 (ISO_IR 192), which encodes anything stored.

    Text, person name and IS values become raw elements holding the bytes pydicom would write;
    the rest goes through `Dataset.from_json`. pydicom writes raw elements as they are when the
    data set's original encoding is the one it writes in (`implicit_vr`, `little_endian`: the
    presentation context's), so the response is marked as if read in that encoding. Decoding the
    JSON into pydicom values and encoding them again took ~1.5 ms per response.
    tests/unit/test_find_response.py checks the bytes against pydicom's own path.
    """
    return _dataset(document, choose_charset(document, request_charset), implicit_vr, little_endian)


def _dataset(
    document: dict[str, Any], charset: str | list[str], implicit_vr: bool, little_endian: bool
) -> Dataset:
    codec = _single_codec(charset)
    dataset = Dataset()
    others: dict[str, Any] = {}
    for name, element in document.items():
        tag = int(name, 16)
        value = _raw_value(element, codec)
        if value is None:
            others[name] = element
        else:
            dataset[tag] = RawDataElement(
                BaseTag(tag), element["vr"], len(value), value, 0, False, True
            )
    if others:
        dataset.update(Dataset.from_json(others))
    dataset.SpecificCharacterSet = charset
    dataset.set_original_encoding(implicit_vr, little_endian, dataset._character_set)
    return dataset


_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
_CHARSET_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})  # PS3.5 6.1.2.3


def _single_codec(charset: str | list[str]) -> str | None:
    """The Python codec of a one-term character set (None for ISO 2022 code extensions)."""
    term = charset if isinstance(charset, str) else charset[0] if len(charset) == 1 else None
    if term is None or term.startswith("ISO 2022"):
        return None
    return python_encoding.get(term or "ISO_IR 6")


def _raw_value(element: Mapping[str, Any], codec: str | None) -> bytes | None:
    """The encoded value of a simple element, or None when pydicom should encode it."""
    vr = element.get("vr")
    values = element.get("Value")
    if values is None:
        return b"" if set(element) == {"vr"} and vr != "SQ" else None
    if not isinstance(values, list) or not values:
        return None
    if vr == "IS":
        if not all(type(v) is int for v in values):
            return None
        return _padded("\\".join(str(v) for v in values), " ")
    if vr == "PN":
        if not all(isinstance(v, dict) for v in values):
            return None
        texts = [_person_name(v) for v in values]
    elif vr in _ASCII_VRS or vr in _CHARSET_VRS:
        if not all(isinstance(v, str) for v in values):
            return None
        texts = values
    else:
        return None
    text = "\\".join(texts)
    if not text.isascii():
        if vr in _ASCII_VRS or codec is None:
            return None
        try:
            return _padded_bytes(text.encode(codec), b" ")
        except (UnicodeError, LookupError):
            return None
    return _padded(text, "\0" if vr == "UI" else " ")


def _person_name(value: Mapping[str, Any]) -> str:
    groups = [value.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


def _padded(text: str, pad: str) -> bytes:
    return _padded_bytes(text.encode("ascii"), pad.encode("ascii"))


def _padded_bytes(encoded: bytes, pad: bytes) -> bytes:
    return encoded + pad if len(encoded) % 2 else encoded


def choose_charset(document: Mapping[str, Any], request_charset: Sequence[str]) -> str | list[str]:
    """The Specific Character Set for a response carrying `document`."""
    texts = [] if _all_ascii(document) else [t for t in _texts(document) if not t.isascii()]
    requested = [term for term in request_charset if term]
    if not texts:
        return requested[0] if len(requested) == 1 else list(requested) if requested else ""
    if len(requested) == 1 and _encodes(requested[0], texts):
        return requested[0]
    return UTF8


def _all_ascii(document: Mapping[str, Any]) -> bool:
    """Whether every text of `document` is ASCII: its JSON, whose keys are, is (orjson
    writes UTF-8, never \\u escapes); one call instead of a walk of every value."""
    try:
        return orjson.dumps(document).isascii()
    except orjson.JSONEncodeError:
        return False


def _encodes(term: str, texts: list[str]) -> bool:
    codec = python_encoding.get(term)
    if codec is None or term.startswith("ISO 2022"):
        return False
    try:
        codecs.lookup(codec)
        for text in texts:
            text.encode(codec)
    except (LookupError, UnicodeError):
        return False
    return True


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
