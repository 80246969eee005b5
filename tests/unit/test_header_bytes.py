"""dicom/header_bytes.py against pydicom: the header read from the bytes is read_header's.

Over pydicom's own test files and pacsd's generated data (test_fastjson.py's corpus), every
data set the fast reader takes gets the JSON that `header_json(read_header(...))` gives; the
ones it leaves to pydicom are the unusual ones, and the usual ones are not among them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsd.dicom.header import header_json, read_header
from pacsd.dicom.header_bytes import fast_header_json
from pacsd.dicom.part10 import open_dataset, read_layout
from tests import datagen

# no_validation: the autouse fixture, imported so that it applies here too.
from tests.unit.test_fastjson import CORPUS, _same, no_validation  # noqa: F401


def both(data: bytes) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the fast reader's header or None, pydicom's header) of a Part 10 file's bytes."""
    stream = io.BytesIO(data)
    source = open_dataset(stream, read_layout(stream), 1 << 30)
    assert source.little_endian
    view = source.stream.getbuffer()  # type: ignore[attr-defined]
    try:
        fast = fast_header_json(view, source.start, source.end, source.explicit_vr)
    finally:
        view.release()
    return fast, header_json(read_header(source))


def _little_endian_files() -> list[Path]:
    chosen = []
    for path in CORPUS:
        try:
            stream = io.BytesIO(path.read_bytes())
            layout = read_layout(stream)
            if not layout.transfer_syntax_uid.is_little_endian:
                continue
            open_dataset(stream, layout, 1 << 30)
        except Exception:  # noqa: S112 (not Part 10, or not readable: not this test's case)
            continue
        chosen.append(path)
    return chosen


LITTLE_ENDIAN = _little_endian_files()


def test_the_corpus_is_mostly_read_fast() -> None:
    """The fast reader is not a path never taken: most of pydicom's files go through it."""
    taken = sum(both(path.read_bytes())[0] is not None for path in LITTLE_ENDIAN)
    assert len(LITTLE_ENDIAN) > 50
    assert taken > 0.7 * len(LITTLE_ENDIAN), (taken, len(LITTLE_ENDIAN))


@pytest.mark.parametrize("path", LITTLE_ENDIAN, ids=lambda path: path.name)
def test_the_fast_header_is_pydicoms_on_its_test_files(path: Path) -> None:
    """Element for element, value for value, where the fast reader reads it at all."""
    try:
        fast, slow = both(path.read_bytes())
    except Exception as exc:
        pytest.skip(f"pydicom cannot read {path.name}: {exc}")
    if fast is not None:
        assert _same(fast, slow)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("name", ["ct", "sr", "mr"])
def test_the_fast_header_is_pydicoms_on_generated_data(
    tmp_path: Path, syntax: str, name: str
) -> None:
    """pacsd's generated instances with awkward values (names with components, an empty
    name, a nested sequence, a private element, an ambiguous VR), read fast."""
    study = datagen.StudyContext(patient_name="Müller^Jürgen=ミュラー")
    dataset = {
        "ct": lambda: datagen.ct_image(study, 3, 16),
        "sr": lambda: datagen.basic_text_sr(study, 1),
        "mr": lambda: datagen.mr_image(study, 2),
    }[name]()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.ReferringPhysicianName = ""
    dataset.OtherPatientNames = ["Doe^J", "=Ideo", "A^B==Phon"]
    dataset.ImageComments = "trailing spaces and NULs  "
    dataset.add_new(0x00091010, "LO", "private, implicit VR unknown")
    dataset.add_new(0x00280106, "US", 0)  # US or SS in the dictionary: pydicom decides
    path = datagen.write_part10(dataset, tmp_path / f"{name}.dcm", syntax)
    fast, slow = both(path.read_bytes())
    assert fast is not None
    assert _same(fast, slow)
    assert fast["00101001"]["Value"][2] == {
        "Alphabetic": "A^B",
        "Ideographic": "",
        "Phonetic": "Phon",
    }


def test_unusual_data_sets_are_left_to_pydicom(tmp_path: Path) -> None:
    """An element of undefined length outside a sequence, or a repeated tag: None."""
    path = datagen.write_part10(datagen.ct_image(datagen.StudyContext(), 1, 8), tmp_path / "a.dcm")
    data = path.read_bytes()
    stream = io.BytesIO(data)
    layout = read_layout(stream)
    start = layout.dataset_offset
    assert fast_header_json(data, start, len(data), True) is not None
    element = b"\x08\x00\x16\x00UI\x04\x001.2\x00"  # (0008,0016) twice
    twice = data[:start] + element + element + data[start:]
    assert fast_header_json(twice, start, len(twice), True) is None
    undefined = b"\x08\x00\x18\x00OB\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    odd = data[:start] + undefined + data[start:]
    assert fast_header_json(odd, start, len(odd), True) is None
