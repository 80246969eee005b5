"""Where the image boxes of a film lie, and how an image fills its box (PS3.3 C.13.3, C.13.5).

A film is the page of its Film Size ID (PORTRAIT: the shorter side across; LANDSCAPE turned),
with a gap of `GAP_MM` of border density around and between the image boxes:
- STANDARD\\C,R: C columns and R rows of equal boxes;
- ROW\\R1,R2,...: one row per value, R1 equal boxes in the first, R2 in the second, ...;
- COL\\C1,C2,...: one column per value, C1 equal boxes in the first, ...;
- SLIDE and SUPERSLIDE: "configuration dependent" (C.13.3): pacsd lays 50 mm slide mounts as
  many as fit across and down, each showing a 36 x 24 mm (SLIDE, 35 mm film) or 40 x 40 mm
  (SUPERSLIDE) image area;
- CUSTOM\\i: formats a Conformance Statement defines; pacsd defines none, so 0x0106.
Image Box Position counts left to right, then top to bottom, except COL: top to bottom, then
left to right (C.13.5.1).

An image fills its box keeping its proportions (the pixel aspect ratio applied), centred, unless
Requested Image Size (its width in mm) or Magnification Type NONE (one printer pixel per image
pixel) give it a size of its own; one larger than its box is then demagnified (0xB604, or 0xB60A
when DECIMATE was asked), cropped about its centre (CROP, 0xB609), or refused (FAIL, 0xC603).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pacsd.dicom.print_attributes import (
    FILM_SIZES_MM,
    IMAGE_CROPPED,
    IMAGE_DECIMATED,
    IMAGE_DEMAGNIFIED,
    IMAGE_DISPLAY_FORMAT,
    IMAGE_TOO_LARGE,
    INVALID_ATTRIBUTE_VALUE,
    PrintRefused,
)

GAP_MM = 2.0
SLIDE_MOUNT_MM = 50.0
SLIDE_APERTURES_MM = {"SLIDE": (36.0, 24.0), "SUPERSLIDE": (40.0, 40.0)}
MAX_PER_LINE = 32  # boxes across or down: more would leave a few millimetres each
MAX_IMAGE_BOXES = 256
MM_PER_INCH = 25.4
_COUNTS = re.compile(r"^[1-9][0-9]{0,2}(,[1-9][0-9]{0,2})*$")


@dataclass(frozen=True)
class DisplayFormat:
    """A parsed Image Display Format (2010,0010)."""

    kind: str  # STANDARD, ROW, COL, SLIDE, SUPERSLIDE
    counts: tuple[int, ...] = ()

    def __str__(self) -> str:
        if not self.counts:
            return self.kind
        return f"{self.kind}\\{','.join(str(count) for count in self.counts)}"


@dataclass(frozen=True)
class Rect:
    """A rectangle on the film, in millimetres from its top left corner."""

    left: float
    top: float
    width: float
    height: float

    def pixels(self, dpi: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) in whole printer pixels at `dpi`."""
        scale = dpi / MM_PER_INCH
        left, top = round(self.left * scale), round(self.top * scale)
        right = round((self.left + self.width) * scale)
        bottom = round((self.top + self.height) * scale)
        return left, top, max(1, right - left), max(1, bottom - top)


def _refuse(why: str) -> PrintRefused:
    return PrintRefused(INVALID_ATTRIBUTE_VALUE, why, [IMAGE_DISPLAY_FORMAT])


def display_format(text: str) -> DisplayFormat:
    """Image Display Format parsed (0x0106 when pacsd cannot lay it out)."""
    kind, _, values = text.strip().partition("\\")
    if kind in SLIDE_APERTURES_MM and not values:
        return DisplayFormat(kind)
    if kind == "CUSTOM":
        raise _refuse(f"{text!r}: pacsd defines no CUSTOM image display formats")
    if kind not in ("STANDARD", "ROW", "COL") or not _COUNTS.match(values):
        raise _refuse(f"{text!r} is not an image display format PS3.3 C.13.3 defines")
    counts = tuple(int(value) for value in values.split(","))
    if kind == "STANDARD" and len(counts) != 2:
        raise _refuse(f"{text!r}: STANDARD takes columns,rows")
    lines = counts if kind == "STANDARD" else (*counts, len(counts))
    total = counts[0] * counts[1] if kind == "STANDARD" else sum(counts)
    if max(lines) > MAX_PER_LINE or total > MAX_IMAGE_BOXES:
        raise _refuse(f"{text!r}: at most {MAX_PER_LINE} per line, {MAX_IMAGE_BOXES} in all")
    return DisplayFormat(kind, counts)


def page_mm(film_size_id: str, orientation: str) -> tuple[float, float]:
    """(width, height) of the film in mm."""
    short, long = sorted(FILM_SIZES_MM[film_size_id])
    return (long, short) if orientation == "LANDSCAPE" else (short, long)


def page_pixels(film_size_id: str, orientation: str, dpi: int) -> tuple[int, int]:
    """(width, height) of the film in printer pixels."""
    width, height = page_mm(film_size_id, orientation)
    return round(width * dpi / MM_PER_INCH), round(height * dpi / MM_PER_INCH)


def _split(length: float, parts: int) -> list[tuple[float, float]]:
    """(start, size) of `parts` equal pieces of `length`, with gaps around and between."""
    size = (length - (parts + 1) * GAP_MM) / parts
    return [(GAP_MM + index * (size + GAP_MM), size) for index in range(parts)]


def image_boxes(layout: DisplayFormat, page: tuple[float, float]) -> list[Rect]:
    """The image boxes of a film, by Image Box Position (index 0 is position 1)."""
    width, height = page
    if layout.kind == "STANDARD":
        columns, rows = layout.counts
        return [
            Rect(left, top, box_width, box_height)
            for top, box_height in _split(height, rows)
            for left, box_width in _split(width, columns)
        ]
    if layout.kind == "ROW":
        return [
            Rect(left, top, box_width, row_height)
            for (top, row_height), count in zip(
                _split(height, len(layout.counts)), layout.counts, strict=True
            )
            for left, box_width in _split(width, count)
        ]
    if layout.kind == "COL":
        return [
            Rect(left, top, column_width, box_height)
            for (left, column_width), count in zip(
                _split(width, len(layout.counts)), layout.counts, strict=True
            )
            for top, box_height in _split(height, count)
        ]
    return _slides(layout.kind, width, height)


def _slides(kind: str, width: float, height: float) -> list[Rect]:
    columns = max(1, math.floor(width / SLIDE_MOUNT_MM))
    rows = max(1, math.floor(height / SLIDE_MOUNT_MM))
    left0 = (width - columns * SLIDE_MOUNT_MM) / 2
    top0 = (height - rows * SLIDE_MOUNT_MM) / 2
    aperture_width, aperture_height = SLIDE_APERTURES_MM[kind]
    inset_x = (SLIDE_MOUNT_MM - aperture_width) / 2
    inset_y = (SLIDE_MOUNT_MM - aperture_height) / 2
    return [
        Rect(
            left0 + column * SLIDE_MOUNT_MM + inset_x,
            top0 + row * SLIDE_MOUNT_MM + inset_y,
            aperture_width,
            aperture_height,
        )
        for row in range(rows)
        for column in range(columns)
    ]


@dataclass(frozen=True)
class Placement:
    """How one image lands in its box: the size drawn (printer pixels), the part of the image
    shown (left, top, right, bottom in image pixels; None: all of it), and the status."""

    width: int
    height: int
    crop: tuple[float, float, float, float] | None = None
    status: int = 0


def place(
    image_size: tuple[float, float],
    box: tuple[int, int],
    magnification_type: str,
    requested_width: float | None,
    behaviour: str,
) -> Placement:
    """Fit an image of `image_size` (width, height in pixel widths) into `box` (printer pixels).

    `requested_width`: Requested Image Size in printer pixels, or None; `behaviour`: Requested
    Decimate/Crop Behavior ("" when not given).
    """
    image_width, image_height = image_size
    box_width, box_height = box
    if requested_width is not None:
        scale = requested_width / image_width
    elif magnification_type == "NONE":
        scale = 1.0
    else:
        scale = min(box_width / image_width, box_height / image_height)
    width, height = image_width * scale, image_height * scale
    if width <= box_width + 0.5 and height <= box_height + 0.5:
        return Placement(_whole(width, box_width), _whole(height, box_height))
    if behaviour == "FAIL":
        raise PrintRefused(
            IMAGE_TOO_LARGE,
            f"image of {round(width)}x{round(height)} pixels is larger than its box "
            f"({box_width}x{box_height}) and Requested Decimate/Crop Behavior is FAIL",
        )
    if behaviour == "CROP":
        shown_width, shown_height = min(width, box_width), min(height, box_height)
        crop_width, crop_height = shown_width / scale, shown_height / scale
        left = (image_width - crop_width) / 2
        top = (image_height - crop_height) / 2
        return Placement(
            _whole(shown_width, box_width),
            _whole(shown_height, box_height),
            (left, top, left + crop_width, top + crop_height),
            IMAGE_CROPPED,
        )
    fit = min(box_width / width, box_height / height)
    status = IMAGE_DECIMATED if behaviour == "DECIMATE" else IMAGE_DEMAGNIFIED
    return Placement(_whole(width * fit, box_width), _whole(height * fit, box_height), None, status)


def _whole(size: float, limit: int) -> int:
    return max(1, min(limit, round(size)))
