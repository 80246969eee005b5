"""Image Display Formats, film pages and how an image fills its box (PS3.3 C.13.3, C.13.5.1)."""

from __future__ import annotations

import pytest

from pacsd.dicom.print_attributes import PrintRefused
from pacsd.dicom.print_layout import (
    GAP_MM,
    DisplayFormat,
    Rect,
    display_format,
    image_boxes,
    page_mm,
    page_pixels,
    place,
)


@pytest.mark.parametrize(
    ("text", "expected", "boxes"),
    [
        ("STANDARD\\2,2", DisplayFormat("STANDARD", (2, 2)), 4),
        ("STANDARD\\3,1", DisplayFormat("STANDARD", (3, 1)), 3),
        ("ROW\\1,3,2", DisplayFormat("ROW", (1, 3, 2)), 6),
        ("COL\\2,1", DisplayFormat("COL", (2, 1)), 3),
        ("SLIDE", DisplayFormat("SLIDE"), 56),  # 7 x 8 mounts of 50 mm on 14x17 in
        ("SUPERSLIDE", DisplayFormat("SUPERSLIDE"), 56),
    ],
)
def test_display_formats_pacsd_lays_out(text: str, expected: DisplayFormat, boxes: int) -> None:
    """Each format of PS3.3 C.13.3 but CUSTOM parses, and gives its number of image boxes."""
    parsed = display_format(text)
    assert parsed == expected
    assert str(parsed) == text
    assert len(image_boxes(parsed, page_mm("14INX17IN", "PORTRAIT"))) == boxes


@pytest.mark.parametrize(
    "text",
    [
        "CUSTOM\\1",
        "STANDARD\\2",
        "STANDARD\\0,1",
        "STANDARD\\2,2,2",
        "ROW\\",
        "GRID\\2,2",
        "STANDARD\\33,1",
        "ROW\\01",
        "STANDARD\\16,17",
    ],
)
def test_formats_pacsd_cannot_lay_out_are_invalid_values(text: str) -> None:
    """CUSTOM (no format is defined), malformed counts and too many boxes answer 0x0106 with
    the Image Display Format tag."""
    with pytest.raises(PrintRefused) as refused:
        display_format(text)
    assert refused.value.status == 0x0106
    assert refused.value.tags == [0x20100010]


def test_standard_positions_run_by_rows() -> None:
    """STANDARD\\2,2: position 2 is right of 1, position 3 below 1 (C.13.5.1)."""
    first, second, third, fourth = image_boxes(DisplayFormat("STANDARD", (2, 2)), (200.0, 100.0))
    assert first.left == third.left == GAP_MM
    assert first.top == second.top == GAP_MM
    assert second.left > first.left
    assert third.top > first.top
    assert fourth == Rect(second.left, third.top, second.width, third.height)
    assert first.width == pytest.approx((200 - 3 * GAP_MM) / 2)


def test_col_positions_run_by_columns() -> None:
    """COL\\2,1: positions 1 and 2 are the first column, top to bottom; 3 the second."""
    first, second, third = image_boxes(DisplayFormat("COL", (2, 1)), (200.0, 100.0))
    assert first.left == second.left < third.left
    assert first.top < second.top
    assert third.height == pytest.approx(100 - 2 * GAP_MM)


def test_row_rows_hold_their_own_counts() -> None:
    """ROW\\1,2: one box across the first row, two in the second."""
    first, second, third = image_boxes(DisplayFormat("ROW", (1, 2)), (200.0, 100.0))
    assert first.width == pytest.approx(200 - 2 * GAP_MM)
    assert second.top == third.top > first.top
    assert second.width == pytest.approx((200 - 3 * GAP_MM) / 2)


def test_landscape_turns_the_film() -> None:
    """Film Size ID gives the page; LANDSCAPE puts the long side across."""
    assert page_mm("14INX17IN", "PORTRAIT") == (355.6, 431.8)
    assert page_mm("14INX17IN", "LANDSCAPE") == (431.8, 355.6)
    assert page_mm("A4", "PORTRAIT") == (210.0, 297.0)
    assert page_pixels("8INX10IN", "PORTRAIT", 100) == (800, 1000)


def test_slide_apertures() -> None:
    """SLIDE shows 36 x 24 mm images, SUPERSLIDE 40 x 40 mm, each in a 50 mm mount."""
    slide = image_boxes(DisplayFormat("SLIDE"), (100.0, 50.0))
    superslide = image_boxes(DisplayFormat("SUPERSLIDE"), (100.0, 50.0))
    assert [(box.width, box.height) for box in slide] == [(36.0, 24.0)] * 2
    assert [(box.width, box.height) for box in superslide] == [(40.0, 40.0)] * 2
    assert slide[0].left == pytest.approx(7.0)
    assert slide[1].left == pytest.approx(57.0)


def test_an_image_fills_its_box_keeping_its_proportions() -> None:
    """Without a size of its own, an image is magnified or demagnified to fit, no warning."""
    assert place((100, 50), (400, 400), "BILINEAR", None, "") == place(
        (100, 50), (400, 400), "CUBIC", None, "FAIL"
    )
    placement = place((100, 50), (400, 400), "BILINEAR", None, "")
    assert (placement.width, placement.height, placement.status) == (400, 200, 0)
    assert place((1000, 1000), (100, 200), "REPLICATE", None, "").width == 100


def test_magnification_none_prints_one_pixel_per_pixel() -> None:
    """NONE: the image keeps its size when it fits."""
    placement = place((64, 32), (400, 400), "NONE", None, "")
    assert (placement.width, placement.height, placement.status) == (64, 32, 0)


@pytest.mark.parametrize(
    ("behaviour", "status", "size"),
    [("", 0xB604, (100, 100)), ("DECIMATE", 0xB60A, (100, 100)), ("CROP", 0xB609, (100, 100))],
)
def test_an_image_larger_than_its_box(behaviour: str, status: int, size: tuple[int, int]) -> None:
    """Requested Image Size beyond the box: demagnified (no behaviour asked: 0xB604), decimated
    (0xB60A) or cropped about its centre (0xB609)."""
    placement = place((50, 50), (100, 100), "BILINEAR", 400.0, behaviour)
    assert (placement.width, placement.height) == size
    assert placement.status == status
    if behaviour == "CROP":
        assert placement.crop == pytest.approx((18.75, 18.75, 31.25, 31.25))
    else:
        assert placement.crop is None


def test_fail_refuses_an_image_larger_than_its_box() -> None:
    """Requested Decimate/Crop Behavior FAIL: 0xC603."""
    with pytest.raises(PrintRefused) as refused:
        place((512, 512), (100, 100), "NONE", None, "FAIL")
    assert refused.value.status == 0xC603


def test_requested_image_size_smaller_than_the_box() -> None:
    """Requested Image Size within the box: printed at that size."""
    placement = place((100, 50), (400, 400), "BILINEAR", 200.0, "FAIL")
    assert (placement.width, placement.height, placement.status) == (200, 100, 0)
