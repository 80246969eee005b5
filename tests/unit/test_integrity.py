"""The structural check that refuses truncated or inconsistent data sets before storage."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacsd.dicom.integrity import TruncatedDataset, check_dataset
from pacsd.errors import CannotUnderstand
from tests import datagen

ENCODINGS = [(True, True), (False, True), (True, False)]  # (explicit VR, little endian)


def encode(dataset: Dataset, explicit_vr: bool, little_endian: bool) -> bytes:
    """The data set encoded without file meta."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = not explicit_vr
    buffer.is_little_endian = little_endian
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def check(data: bytes, explicit_vr: bool = True, little_endian: bool = True) -> None:
    """Run the check over all of `data`."""
    check_dataset(io.BytesIO(data), 0, len(data), explicit_vr, little_endian)


def rich_dataset() -> Dataset:
    """Nested undefined-length sequences and encapsulated pixel data."""
    dataset = datagen.basic_text_sr(datagen.StudyContext(), 1)
    for element in (dataset["ContentSequence"], dataset["ConceptNameCodeSequence"]):
        element.is_undefined_length = True
        for item in element.value:
            item.is_undefined_length_sequence_item = True
    return dataset


def top_level_boundaries(dataset: Dataset, explicit_vr: bool, little_endian: bool) -> set[int]:
    """Offsets where a top-level element ends (cutting there leaves a shorter, valid set)."""
    ends, partial = {0}, Dataset()
    for element in dataset:
        partial.add(element)
        ends.add(len(encode(partial, explicit_vr, little_endian)))
    return ends


@pytest.mark.parametrize(("explicit_vr", "little_endian"), ENCODINGS)
def test_complete_data_sets_pass(explicit_vr: bool, little_endian: bool) -> None:
    """Whole data sets pass in every uncompressed encoding, nested sequences included."""
    check(encode(rich_dataset(), explicit_vr, little_endian), explicit_vr, little_endian)
    ct = datagen.ct_image(datagen.StudyContext(), 1, 16)
    check(encode(ct, explicit_vr, little_endian), explicit_vr, little_endian)


@pytest.mark.parametrize(("explicit_vr", "little_endian"), ENCODINGS)
def test_every_cut_inside_an_element_is_refused(explicit_vr: bool, little_endian: bool) -> None:
    """Truncating anywhere but between top-level elements raises CannotUnderstand."""
    dataset = rich_dataset()
    data = encode(dataset, explicit_vr, little_endian)
    boundaries = top_level_boundaries(dataset, explicit_vr, little_endian)
    for cut in range(1, len(data)):
        if cut in boundaries:
            check(data[:cut], explicit_vr, little_endian)
            continue
        with pytest.raises(CannotUnderstand):
            check(data[:cut], explicit_vr, little_endian)


def test_encapsulated_pixel_data_needs_its_delimiter() -> None:
    """Encapsulated fragments cut before the Sequence Delimitation Item are refused."""
    dataset = datagen.with_encapsulated_pixels(datagen.ct_image(datagen.StudyContext(), 1, 16), 3)
    data = encode(dataset, True, True)
    check(data)
    with pytest.raises(TruncatedDataset):
        check(data[:-8])
    with pytest.raises(TruncatedDataset):
        check(data[:-3000])


def test_declared_length_beyond_the_data_is_refused() -> None:
    """An element claiming more bytes than follow (e.g. 0xFFFFFFF0) is refused, not read."""
    header = b"\x10\x00\x10\x00PN\x08\x00Doe^Jane"  # (0010,0010) PN, 8 bytes
    check(header)
    huge = b"\xe0\x7f\x10\x00OW\x00\x00\xf0\xff\xff\xff" + b"\x00" * 64
    with pytest.raises(TruncatedDataset, match="declares 4294967280 bytes"):
        check(header + huge)


def test_undefined_length_on_a_plain_element_is_refused() -> None:
    """Only SQ, UN and encapsulated pixel data may have undefined length."""
    bad = b"\x08\x00\x30\x10UT\x00\x00\xff\xff\xff\xff" + b"\x00" * 16  # (0008,1030) UT
    with pytest.raises(CannotUnderstand, match="undefined length"):
        check(bad)


def test_empty_data_set_is_refused() -> None:
    """Zero bytes is not an instance."""
    with pytest.raises(CannotUnderstand, match="empty"):
        check(b"")
