"""Request data sets (dimse/messages.decode_dataset): the eager conversion of public text
elements (read by pacsd's own element walk) gives exactly the elements pydicom's own reading
and lazy conversion give."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacsd.dimse.messages import _public_text_dataset, decode_dataset, stored_elements

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "ADAMS*"
    ds.PatientID = ""
    ds.PatientBirthDate = "19700101-19801231"
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    ds.StudyDate = ""
    ds.StudyTime = "0800-1200"
    ds.AccessionNumber = "A?12"
    ds.StudyDescription = "  leading spaces kept, trailing removed  "
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.NumberOfStudyRelatedInstances = ""
    ds.NumberOfStudyRelatedSeries = "12"
    ds.add_new(0x00080201, "SH", "+0100")  # Timezone Offset From UTC
    ds.add_new(0x00181030, "LO", "")  # Protocol Name, empty
    ds.add_new(0x00081080, "LO", "a\\b")  # Admitting Diagnoses Description: two values
    ds.add_new(0x00280030, "DS", ["0.5", "0.25"])  # Pixel Spacing: DS values
    ds.add_new(0x00101010, "AS", "042Y")
    return ds


def with_long_text() -> Dataset:
    """Text VRs whose explicit VR encoding has a 32-bit length (PS3.5 7.1.2)."""
    ds = study_query()
    ds.add_new(0x00081190, "UR", "http://example.org/studies/1")  # Retrieve URL
    ds.add_new(0x00400280, "ST", "a comment")  # Comments on the Performed Procedure Step
    ds.add_new(0x00404001, "UT", "x" * 70_000)  # beyond a 16-bit length
    ds.add_new(0x00081080, "UC", "a\\b")  # Admitting Diagnoses Description as UC
    return ds


def with_charset() -> Dataset:
    ds = study_query()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    return ds


def with_private() -> Dataset:
    ds = study_query()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "private value")
    return ds


def with_sequence() -> Dataset:
    ds = study_query()
    item = Dataset()
    item.CodeValue = "T-A0100"
    ds.add_new(0x00081032, "SQ", Sequence([item]))  # Procedure Code Sequence
    return ds


def with_binary() -> Dataset:
    ds = study_query()
    ds.add_new(0x00280010, "US", 512)  # Rows
    return ds


def encoded(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax == IMPLICIT
    buffer.is_little_endian = True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def lazily_converted(data: bytes, syntax: str) -> Dataset:
    """pydicom's own way: read raw, each element converted as it is accessed."""
    ds = read_dataset(BytesIO(data), syntax == IMPLICIT, True)
    for _element in ds:
        pass
    return ds


def described(ds: Dataset) -> list[object]:
    """Each element (tag, VR, value, value type, undefined length, value offset), and how the
    data set was read (its VR form, byte order, character set)."""
    elements = [
        (int(e.tag), e.VR, e.value, type(e.value), e.is_undefined_length, e.file_tell)
        for e in (ds[tag] for tag in sorted(ds.keys()))
    ]
    return [*elements, (ds.original_encoding, ds.original_character_set)]


CASES = {
    "study query": (study_query, True),
    "long text values": (with_long_text, True),
    "specific character set": (with_charset, False),
    "private element": (with_private, False),
    "sequence": (with_sequence, False),
    "binary element": (with_binary, False),
}


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT], ids=["implicit", "explicit"])
@pytest.mark.parametrize("case", list(CASES))
def test_eager_conversion_matches_pydicoms(case: str, syntax: str) -> None:
    make, eager = CASES[case]
    data = encoded(make(), syntax)
    stored = list(stored_elements(decode_dataset(data, syntax)))
    # Eager: every element already a DataElement; otherwise all left raw, as pydicom reads.
    expected_type = DataElement if eager else RawDataElement
    assert {type(element) for element in stored} == {expected_type}, case
    # The eager ones are read by pacsd's own walk, not read by pydicom and converted after.
    assert (_public_text_dataset(data, syntax == IMPLICIT) is not None) == eager, case
    assert described(decode_dataset(data, syntax)) == described(lazily_converted(data, syntax))


def test_person_names_and_numbers_keep_pydicoms_types() -> None:
    ds = decode_dataset(encoded(study_query(), EXPLICIT), EXPLICIT)
    assert type(ds.PatientName).__name__ == "PersonName"
    assert str(ds.PatientName) == "ADAMS*"
    assert ds.NumberOfStudyRelatedInstances is None  # an empty IS reads as None
    assert ds.NumberOfStudyRelatedSeries == 12
    assert list(ds.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    assert ds.StudyDescription == "  leading spaces kept, trailing removed"


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT], ids=["implicit", "explicit"])
@pytest.mark.parametrize("cut", [1, 3, 9])
def test_a_truncated_data_set_reads_as_pydicom_reads_it(cut: int, syntax: str) -> None:
    """A value or header running past the end is left to pydicom's reader: the same elements
    (the last value short, or the element gone) as pydicom gives."""
    data = encoded(study_query(), syntax)[:-cut]
    assert described(decode_dataset(data, syntax)) == described(lazily_converted(data, syntax))


def test_an_empty_data_set_has_no_elements() -> None:
    assert len(decode_dataset(b"", EXPLICIT)) == 0
