"""dicom/fastjson.py against pydicom: the JSON of every raw element it converts is pydicom's.

The corpus is pydicom's own test files (its character set files included) and pacsd's
generated data sets in each uncompressed transfer syntax; each header is made by
`header_json` (fast path, pydicom for the rest) and by pydicom alone, and must be equal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import config, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.fastjson import element_json, text_codec
from pacsd.dicom.header import BULK_DATA_THRESHOLD, DEFER_SIZE, _is_bulk, header_json
from tests import datagen

PYDICOM_DATA = Path(pydicom.data.__file__).parent
CORPUS = sorted(
    path
    for folder in ("test_files", "charset_files")
    for path in (PYDICOM_DATA / folder).rglob("*.dcm")
)


@pytest.fixture(autouse=True)
def no_validation() -> Any:
    """As the server runs pydicom (daemon.py): values read as received, no validation."""
    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    yield
    config.settings.reading_validation_mode = mode


def pydicoms_json(dataset: Dataset) -> dict[str, Any]:
    """The header JSON by pydicom alone (what header_json did before the fast path)."""
    document: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118
        if _is_bulk(dataset.get_item(tag, keep_deferred=True)):
            continue
        try:
            element = dataset[tag]
            if element.VR == "SQ":
                document[f"{tag:08X}"] = {
                    "vr": "SQ",
                    "Value": [pydicoms_json(item) for item in element.value],
                }
            else:
                document[f"{tag:08X}"] = element.to_json_dict(None, BULK_DATA_THRESHOLD)
        except Exception:  # noqa: S112
            continue
    return document


def _same(left: Any, right: Any) -> bool:
    """Equality as JSON: NaN equal to NaN (a float value may be one), a str subclass (a
    pydicom UID) equal to its str, an int never equal to a float."""
    if isinstance(left, str) and isinstance(right, str):
        return str(left) == str(right)
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right) and type(left) is type(right)


def _read(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True, defer_size=DEFER_SIZE, force=True)


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_header_json_equals_pydicoms_on_its_test_files(path: Path) -> None:
    """Every file of pydicom's test data: the same header, element for element."""
    try:
        fast, slow = header_json(_read(path)), pydicoms_json(_read(path))
    except Exception as exc:
        pytest.skip(f"pydicom cannot read {path.name}: {exc}")
    assert _same(fast, slow)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("name", ["ct", "sr", "pdf", "mr"])
def test_header_json_equals_pydicoms_on_generated_data(
    tmp_path: Path, syntax: str, name: str
) -> None:
    """pacsd's generated instances, with awkward values added, in both uncompressed syntaxes."""
    study = datagen.StudyContext(patient_name="Müller^Jürgen")
    make = {
        "ct": lambda: datagen.ct_image(study, 3, 16),
        "sr": lambda: datagen.basic_text_sr(study, 1),
        "pdf": lambda: datagen.encapsulated_pdf(study, 1),
        "mr": lambda: datagen.mr_image(study, 2),
    }[name]
    dataset = make()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.ImageComments = "trailing spaces and NULs  "
    dataset.OtherPatientIDs = ["A ", "", " B"]
    dataset.SliceThickness = "1.50"
    dataset.add_new(0x00200052, "UI", "1.2.3\x00")
    dataset.add_new(0x00181030, "LO", "Kopf  \\  Hals")
    dataset.add_new(0x00080081, "ST", "Straße 1\\2")
    dataset.add_new(0x00091010, "LO", "private, implicit VR unknown")
    dataset.add_new(0x00280106, "US", 0)  # US or SS in the dictionary: pydicom decides
    path = datagen.write_part10(dataset, tmp_path / f"{name}.dcm", syntax)
    assert _same(header_json(_read(path)), pydicoms_json(_read(path)))


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("IS", b"0007", {"vr": "IS", "Value": [7]}),
        ("IS", b"1.0 ", {"vr": "IS", "Value": [1]}),
        ("IS", b"1.5 ", None),  # pydicom refuses a lossy integer: it decides
        ("DS", b" 1.50\\-2e3", {"vr": "DS", "Value": [1.5, -2000.0]}),
        ("AE", b" STORE  ", {"vr": "AE", "Value": ["STORE"]}),
        ("CS", b"A \\B ", {"vr": "CS", "Value": ["A ", "B"]}),
        ("UI", b"1.2.3\x00", {"vr": "UI", "Value": ["1.2.3"]}),
        ("US", b"\x01\x00\x02\x00", {"vr": "US", "Value": [1, 2]}),
        ("US", b"\x01", None),  # an odd length: pydicom decides
        ("AT", b"\x10\x00\x10\x00", {"vr": "AT", "Value": ["00100010"]}),
        ("OB", b"\x00\x01", {"vr": "OB", "InlineBinary": "AAE="}),
        ("LO", b"", {"vr": "LO"}),
        ("PN", b"Doe^J", None),  # person names are pydicom's
        ("SQ", b"", None),
    ],
)
def test_element_json_of_raw_values(vr: str, value: bytes, expected: Any) -> None:
    """Values as pydicom.values converts them (PS3.5 6.2), or None for pydicom to decide."""
    raw = RawDataElement(0x00100020, vr, len(value), value, 0, False, True)
    assert element_json(raw, text_codec(None)) == expected


def test_text_codec_of_the_specific_character_set() -> None:
    """One simple term gives its codec; code extensions or unknown terms give None."""
    assert text_codec(None) == text_codec(b"") == "iso8859"
    assert text_codec(b"ISO_IR 100") == "latin_1"
    assert text_codec(b"ISO_IR 192 ") == "UTF8"
    assert text_codec(b"\\ISO 2022 IR 87") is None
    assert text_codec(b"GB18030") is None
