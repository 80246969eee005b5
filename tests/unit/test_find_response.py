"""C-FIND response identifiers encode to exactly the bytes pydicom's own path gives
(Dataset.from_json, then pydicom's writer), whichever elements take pacsd's raw shortcut, and
whether pacsd writes the bytes itself (`response_identifier`) or through a Dataset."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from pacsd.dicom.find_response import choose_charset, response_dataset, response_identifier
from pacsd.dimse.messages import _flat_encoded, encode_dataset

STUDY_RESPONSE = {
    "00080020": {"vr": "DA", "Value": ["20180301"]},
    "00080030": {"vr": "TM", "Value": ["101500"]},
    "00080050": {"vr": "SH", "Value": ["ACC-1"]},  # odd: padded with a space
    "00080052": {"vr": "CS", "Value": ["STUDY"]},
    "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
    "00081030": {"vr": "LO"},  # asked for, absent: zero length
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "ADAMS^ANNA"}]},
    "00100020": {"vr": "LO", "Value": ["PAT-0001"]},
    "00100030": {"vr": "DA"},
    "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1307.7552"]},
    "00201208": {"vr": "IS", "Value": [5]},
    "0020000E": {"vr": "UI", "Value": ["1.2.3.45"]},  # odd: padded with NULL
}
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "study level, ASCII": (STUDY_RESPONSE, []),
    "study level, latin-1 asked": (STUDY_RESPONSE, ["ISO_IR 100"]),
    "latin-1 name": (
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}},
        ["ISO_IR 100"],
    ),
    "UTF-8 for what latin-1 cannot encode": (
        {
            "00100010": {
                "vr": "PN",
                "Value": [
                    {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ"}
                ],
            },
            "00081030": {"vr": "LO", "Value": ["Étude ½"]},
        },
        ["ISO_IR 100"],
    ),
    "ISO 2022 asked": (
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada", "Ideographic": "山田"}]}},
        ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    ),
    "person name groups": (
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Phonetic": "x"}]},
            "00101001": {"vr": "PN", "Value": [{"Alphabetic": "C"}, {"Ideographic": "D"}]},
        },
        [],
    ),
    "empty components and multiple values": (
        {"00080008": {"vr": "CS", "Value": ["ORIGINAL", "", "AXIAL"]}},
        [],
    ),
    "what goes through pydicom": (
        {
            "00281053": {"vr": "DS", "Value": [1.5]},
            "00280010": {"vr": "US", "Value": [512]},
            "00081111": {"vr": "SQ", "Value": []},
            "00081110": {
                "vr": "SQ",
                "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}],
            },
            "00201209": {"vr": "IS", "Value": ["7"]},
            "00091010": {"vr": "OB", "InlineBinary": "AAE="},
        },
        [],
    ),
}


def pydicoms(document: dict[str, Any], request_charset: list[str]) -> Dataset:
    """The response as pacsd built it before: all of it through Dataset.from_json."""
    dataset = Dataset.from_json(document)
    dataset.SpecificCharacterSet = choose_charset(document, request_charset)
    return dataset


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_response_bytes_equal_pydicoms(case: str, implicit: bool) -> None:
    document, request_charset = CASES[case]
    ours = encode(response_dataset(document, request_charset, implicit), implicit, True)
    theirs = encode(pydicoms(document, request_charset), implicit, True)
    assert ours == theirs


def test_simple_values_take_the_raw_shortcut() -> None:
    """The shortcut is taken (else the test above would compare pydicom with itself)."""
    dataset = response_dataset(STUDY_RESPONSE, [])
    items = dataset.keys()
    raw = [tag for tag in items if isinstance(dataset.get_item(tag), RawDataElement)]
    assert len(raw) == len(STUDY_RESPONSE)
    assert dataset.PatientName == "ADAMS^ANNA"  # and it still reads back as a value


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_message_encoding_equals_pydicoms_writer(case: str, implicit: bool) -> None:
    """dimse.messages.encode_dataset writes flat responses itself: the same bytes."""
    document, request_charset = CASES[case]
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    dataset = response_dataset(document, request_charset, implicit)
    assert encode_dataset(dataset, syntax) == encode(dataset, implicit, True)


def test_a_flat_response_is_written_without_pydicom() -> None:
    """The shortcut is taken for a flat response, not for one holding a sequence."""
    assert _flat_encoded(response_dataset(STUDY_RESPONSE, [], False), implicit=False)
    nested = response_dataset(CASES["what goes through pydicom"][0], [], False)
    assert _flat_encoded(nested, implicit=False) is None


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_identifier_bytes_equal_pydicoms(case: str, implicit: bool) -> None:
    """`response_identifier` writes a simple response itself; a response with an element
    pydicom must write comes as a Dataset. Either way the message carries pydicom's bytes."""
    document, request_charset = CASES[case]
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    identifier = response_identifier(document, request_charset, syntax)
    ours = identifier if isinstance(identifier, bytes) else encode_dataset(identifier, syntax)
    assert ours == encode(pydicoms(document, request_charset), implicit, True)


def test_simple_responses_are_written_without_a_dataset() -> None:
    """Bytes for the simple cases (else the test above compares the Dataset path again), a
    Dataset for the one holding sequences and binary values, and for a big endian syntax."""
    simple = [name for name in CASES if name != "what goes through pydicom"]
    for name in simple:
        document, request_charset = CASES[name]
        identifier = response_identifier(document, request_charset, ExplicitVRLittleEndian)
        assert isinstance(identifier, bytes), name
    nested, _ = CASES["what goes through pydicom"]
    assert isinstance(response_identifier(nested, [], ExplicitVRLittleEndian), Dataset)
    big_endian = response_identifier(STUDY_RESPONSE, [], "1.2.840.10008.1.2.2")
    assert isinstance(big_endian, Dataset)


def test_a_requested_character_set_key_is_answered_once() -> None:
    """A request that lists Specific Character Set as a key gets the response's own, once."""
    document = {**STUDY_RESPONSE, "00080005": {"vr": "CS"}}
    identifier = response_identifier(document, ["ISO_IR 100"], ExplicitVRLittleEndian)
    assert isinstance(identifier, bytes)
    assert identifier == encode(pydicoms(STUDY_RESPONSE, ["ISO_IR 100"]), False, True)
    assert identifier.count(b"\x08\x00\x05\x00") == 1
