"""The checks of Film Session, Film Box and Image Box attribute lists (PS3.4 H.4.1-H.4.3): each
refusal's status and the tags of its Attribute Identifier List."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacsd.dicom.print_attributes import (
    FILM_SESSION,
    PRESENTATION_LUT,
    FilmBoxAttributes,
    FilmSessionAttributes,
    ImageBoxAttributes,
    PrinterProfile,
    PrintRefused,
)
from pacsd.dicom.print_validation import (
    check_densities,
    film_box_create,
    film_box_set,
    film_session,
    image_box_set,
    referenced_film_session,
)


def dataset(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def refused(call: Any, *args: Any) -> PrintRefused:
    with pytest.raises(PrintRefused) as caught:
        call(*args)
    return caught.value


def test_film_session_defaults_and_values() -> None:
    """What the SCU leaves out keeps its default; what it sends is in force; status 0."""
    values, status = film_session(
        dataset(NumberOfCopies="3", PrintPriority="HIGH", FilmDestination="BIN_2"),
        FilmSessionAttributes(),
    )
    assert status == 0
    assert values == FilmSessionAttributes(
        number_of_copies=3, print_priority="HIGH", film_destination="BIN_2"
    )


def test_memory_allocation_is_a_warning() -> None:
    """PS3.4 H.4.1.2.1.2: Memory Allocation not supported, 0xB600; the session is made."""
    values, status = film_session(dataset(MemoryAllocation="1024"), FilmSessionAttributes())
    assert status == 0xB600
    assert values == FilmSessionAttributes()


@pytest.mark.parametrize(
    ("keyword", "value", "tag"),
    [
        ("NumberOfCopies", "0", 0x20000010),
        ("PrintPriority", "URGENT", 0x20000020),
        ("MediumType", "GLASS", 0x20000030),
        ("FilmDestination", "BIN_01", 0x20000040),
        ("FilmDestination", "TRAY", 0x20000040),
    ],
)
def test_film_session_invalid_values(keyword: str, value: str, tag: int) -> None:
    """A value outside the enumerated values or defined terms: 0x0106 with its tag."""
    error = refused(film_session, dataset(**{keyword: value}), FilmSessionAttributes())
    assert (error.status, error.tags) == (0x0106, [tag])


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_a_value_that_does_not_decode_is_invalid() -> None:
    """An IS that is no number, as received: 0x0106, not a processing failure."""
    attributes = Dataset()
    attributes[0x20000010] = RawDataElement(Tag(0x20000010), "IS", 4, b"many", 0, False, True)
    error = refused(film_session, attributes, FilmSessionAttributes())
    assert (error.status, error.tags) == (0x0106, [0x20000010])


def test_unknown_attributes_are_no_such_attribute() -> None:
    """Attributes outside the operation's table: 0x0105, every one of them listed."""
    error = refused(
        film_session,
        dataset(NumberOfCopies="1", PatientName="X^Y", ImageDisplayFormat="STANDARD\\1,1"),
        FilmSessionAttributes(),
    )
    assert error.status == 0x0105
    assert error.tags == [0x00100010, 0x20100010]


def test_empty_values_count_as_absent() -> None:
    """A U attribute sent empty keeps the default."""
    values, _ = film_session(dataset(MediumType="", FilmSessionLabel=""), FilmSessionAttributes())
    assert values == FilmSessionAttributes()


def _film_box(**values: Any) -> Dataset:
    reference = dataset(ReferencedSOPClassUID=FILM_SESSION, ReferencedSOPInstanceUID="1.2.3")
    return dataset(
        ImageDisplayFormat="STANDARD\\2,2",
        ReferencedFilmSessionSequence=Sequence([reference]),
        **values,
    )


def test_film_box_create() -> None:
    """N-CREATE takes the format, film, densities, trim and resolution."""
    values = film_box_create(
        _film_box(FilmOrientation="LANDSCAPE", FilmSizeID="A4", BorderDensity="150", Trim="YES"),
        FilmBoxAttributes(),
    )
    assert values == FilmBoxAttributes(
        image_display_format="STANDARD\\2,2",
        film_orientation="LANDSCAPE",
        film_size_id="A4",
        border_density="150",
        trim="YES",
    )
    assert referenced_film_session(_film_box()) == "1.2.3"


def test_film_box_mandatory_attributes() -> None:
    """Image Display Format and Referenced Film Session Sequence: 0x0120 absent, 0x0121 empty."""
    missing = refused(
        film_box_create, dataset(ImageDisplayFormat="STANDARD\\1,1"), FilmBoxAttributes()
    )
    assert (missing.status, missing.tags) == (0x0120, [0x20100500])
    empty_format = _film_box()
    empty_format.ImageDisplayFormat = ""
    empty = refused(film_box_create, empty_format, FilmBoxAttributes())
    assert (empty.status, empty.tags) == (0x0121, [0x20100010])


def test_referenced_film_session_must_name_a_film_session() -> None:
    """An item of another class, or two items: 0x0106 with the sequence's tag."""
    wrong = dataset(ReferencedSOPClassUID=PRESENTATION_LUT, ReferencedSOPInstanceUID="1.2.3")
    error = refused(
        referenced_film_session,
        dataset(ReferencedFilmSessionSequence=Sequence([wrong])),
    )
    assert (error.status, error.tags) == (0x0106, [0x20100500])


@pytest.mark.parametrize(
    ("keyword", "value", "status"),
    [
        ("SmoothingType", "MEDIUM", 0x0105),  # not supported
        ("AnnotationDisplayFormatID", "TITLE", 0x0105),  # no annotation boxes
        ("ConfigurationInformation", "GAMMA=2", 0x0106),  # no values defined
        ("FilmSizeID", "35MM", 0x0106),
        ("MagnificationType", "SINC", 0x0106),
        ("BorderDensity", "GRAY", 0x0106),
        ("EmptyImageDensity", "2000", 0x0106),
        ("Trim", "MAYBE", 0x0106),
        ("RequestedResolutionID", "ULTRA", 0x0106),
        ("FilmOrientation", "DIAGONAL", 0x0106),
    ],
)
def test_film_box_refusals(keyword: str, value: str, status: int) -> None:
    """Unsupported attributes answer 0x0105, values pacsd cannot honour 0x0106."""
    error = refused(film_box_create, _film_box(**{keyword: value}), FilmBoxAttributes())
    assert error.status == status
    assert len(error.tags) == 1


def test_film_box_set_cannot_change_the_format() -> None:
    """N-SET of a Film Box: the format and film are N-CREATE's alone (0x0105)."""
    values = film_box_set(dataset(MagnificationType="CUBIC"), FilmBoxAttributes())
    assert values.magnification_type == "CUBIC"
    error = refused(film_box_set, dataset(ImageDisplayFormat="STANDARD\\1,1"), FilmBoxAttributes())
    assert (error.status, error.tags) == (0x0105, [0x20100010])


def test_presentation_lut_reference() -> None:
    """The Referenced Presentation LUT Sequence names one Presentation LUT instance."""
    item = dataset(ReferencedSOPClassUID=PRESENTATION_LUT, ReferencedSOPInstanceUID="1.2.9")
    values = film_box_set(
        dataset(ReferencedPresentationLUTSequence=Sequence([item])), FilmBoxAttributes()
    )
    assert values.presentation_lut_uid == "1.2.9"
    two = dataset(ReferencedPresentationLUTSequence=Sequence([item, item]))
    assert refused(film_box_set, two, FilmBoxAttributes()).tags == [0x20500500]


def test_densities_within_the_printer_range() -> None:
    """C.13.3: beyond the printer's range, its own values and 0xB605; Min not below Max 0x0106."""
    profile = PrinterProfile(min_density=20, max_density=300)
    assert check_densities(30, 250, profile) == (30, 250, 0)
    assert check_densities(0, 400, profile) == (20, 300, 0xB605)
    assert check_densities(310, 400, profile) == (20, 300, 0xB605)
    error = refused(check_densities, 200, 100, profile)
    assert (error.status, error.tags) == (0x0106, [0x20100120, 0x20100130])


def _image_box(color: bool = False, **values: Any) -> Dataset:
    item = dataset(Rows=1)
    key = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
    return dataset(ImageBoxPosition=1, **{key: Sequence([item])}, **values)


def test_image_box_set() -> None:
    """Position, the image item and the presentation attributes."""
    values, position, item = image_box_set(
        _image_box(Polarity="REVERSE", RequestedImageSize="50.5", MaxDensity=250),
        ImageBoxAttributes(),
        False,
    )
    assert position == 1
    assert item.Rows == 1
    assert values == ImageBoxAttributes(
        polarity="REVERSE", requested_image_size=50.5, max_density=250
    )


def test_image_box_mandatory_attributes() -> None:
    """Image Box Position and the image sequence are M (0x0120); one item only (0x0106)."""
    no_position = refused(image_box_set, dataset(Polarity="NORMAL"), ImageBoxAttributes(), False)
    assert (no_position.status, no_position.tags) == (0x0120, [0x20200010])
    no_image = refused(image_box_set, dataset(ImageBoxPosition=1), ImageBoxAttributes(), False)
    assert (no_image.status, no_image.tags) == (0x0120, [0x20200110])
    two = _image_box()
    two.BasicGrayscaleImageSequence.append(dataset(Rows=2))
    assert refused(image_box_set, two, ImageBoxAttributes(), False).status == 0x0106


def test_color_box_takes_no_grayscale_attributes() -> None:
    """A Color Image Box: the grayscale sequence and densities are no attributes of it."""
    error = refused(
        image_box_set, _image_box(color=True, MinDensity=10), ImageBoxAttributes(), True
    )
    assert (error.status, error.tags) == (0x0105, [0x20100120])
    error = refused(image_box_set, _image_box(color=False), ImageBoxAttributes(), True)
    assert error.status == 0x0120  # its own sequence is missing


@pytest.mark.parametrize(
    ("keyword", "value", "status"),
    [
        ("Polarity", "INVERTED", 0x0106),
        ("RequestedDecimateCropBehavior", "SHRINK", 0x0106),
        ("RequestedImageSize", "-3", 0x0106),
        ("SmoothingType", "SHARP", 0x0105),
    ],
)
def test_image_box_refusals(keyword: str, value: str, status: int) -> None:
    """Image Box values pacsd cannot honour."""
    error = refused(image_box_set, _image_box(**{keyword: value}), ImageBoxAttributes(), False)
    assert error.status == status
