"""A film drawn as a picture: the image boxes of a Film Box on their page, with Pillow.

What a file can honour of PS3.3 C.13 and how (README, "Print"):
- densities: the file shows optical density linearly between the printer's range (`PrinterProfile`
  min_density: white, max_density: black); Min / Max Density bound an image's darkest and
  lightest values; Border and Empty Image Density (BLACK, WHITE or hundredths of OD) fill the
  space between images and the boxes without one;
- Polarity REVERSE, MONOCHROME1 and the Presentation LUT turn the values over or map them
  (print_image.py);
- Magnification Type: REPLICATE (nearest neighbour), BILINEAR, CUBIC (bicubic) resampling; NONE
  one printer pixel per image pixel;
- Trim YES: a line about each image, in the density furthest from the border's.
Grayscale films are 8-bit grayscale PNGs, color films RGB; the PDF has one page per film at its
film size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pacsd.dicom.print_image import (
    PresentationLut,
    PrintImage,
    color_values,
    grayscale_values,
)
from pacsd.dicom.print_layout import Placement, place

_FILTERS = {
    "REPLICATE": Image.Resampling.NEAREST,
    "BILINEAR": Image.Resampling.BILINEAR,
    "CUBIC": Image.Resampling.BICUBIC,
    "NONE": Image.Resampling.NEAREST,
}
TRIM_MM = 0.5


@dataclass(frozen=True)
class DensityRange:
    """The printer's densities (hundredths of OD): what white and black stand for."""

    minimum: int
    maximum: int

    def gray(self, density: float) -> float:
        """The gray level (0 black .. 1 white) of `density`."""
        span = max(self.maximum - self.minimum, 1)
        return float(np.clip((self.maximum - density) / span, 0.0, 1.0))

    def named(self, value: str) -> float:
        """The gray level of a Border / Empty Image Density: BLACK, WHITE or hundredths."""
        if value == "BLACK":
            return 0.0
        if value == "WHITE":
            return 1.0
        return self.gray(int(value))


@dataclass(frozen=True)
class FilmPage:
    """What a Film Box asks of its page."""

    size: tuple[int, int]  # printer pixels
    dpi: int
    boxes: Sequence[tuple[int, int, int, int]]  # (left, top, width, height) by position
    color: bool
    border: float  # gray levels 0..1
    empty: float
    trim: bool


@dataclass(frozen=True)
class BoxImage:
    """An Image Box with an image, and what applies to it."""

    image: PrintImage
    polarity: str
    magnification_type: str
    min_density: int
    max_density: int
    requested_width: float | None  # printer pixels
    behaviour: str
    lut: PresentationLut | None


def placements(page: FilmPage, contents: Sequence[BoxImage | None]) -> list[Placement | None]:
    """Where each image lands (raises PrintRefused 0xC603 for one that may not be shrunk)."""
    return [
        None
        if content is None
        else place(
            content.image.natural_size(),
            (box[2], box[3]),
            content.magnification_type,
            content.requested_width,
            content.behaviour,
        )
        for box, content in zip(page.boxes, contents, strict=True)
    ]


def render_film(
    page: FilmPage, contents: Sequence[BoxImage | None], densities: DensityRange
) -> tuple[Image.Image, list[int]]:
    """The film as a picture, and the statuses of its images' placements (0 or 0xB6xx)."""
    mode = "RGB" if page.color else "L"
    film = Image.new(mode, page.size, _level(page.border, page.color))
    draw = ImageDraw.Draw(film)
    trim_width = max(1, round(TRIM_MM * page.dpi / 25.4))
    trim = _level(0.0 if page.border >= 0.5 else 1.0, page.color)
    statuses = []
    for box, content, placement in zip(
        page.boxes, contents, placements(page, contents), strict=True
    ):
        left, top, width, height = box
        if content is None or placement is None:
            draw.rectangle(
                (left, top, left + width - 1, top + height - 1), _level(page.empty, page.color)
            )
            continue
        picture = _picture(content, densities, placement, page.color)
        x = left + (width - placement.width) // 2
        y = top + (height - placement.height) // 2
        film.paste(picture, (x, y))
        statuses.append(placement.status)
        if page.trim:
            outline = (
                x - trim_width,
                y - trim_width,
                x + placement.width + trim_width - 1,
                y + placement.height + trim_width - 1,
            )
            draw.rectangle(outline, outline=trim, width=trim_width)
    return film, statuses


def _level(gray: float, color: bool) -> int | tuple[int, int, int]:
    level = round(gray * 255)
    return (level, level, level) if color else level


def _picture(
    content: BoxImage, densities: DensityRange, placement: Placement, color: bool
) -> Image.Image:
    image = content.image
    if image.color:
        values = color_values(image)
        if content.polarity == "REVERSE":
            values = 1.0 - values
        picture = Image.fromarray(np.rint(values * 255).astype(np.uint8), "RGB")
    else:
        values = grayscale_values(image)
        if content.polarity == "REVERSE":  # PS3.4 H.2.1.2: polarity before the P-LUT
            values = 1.0 - values
        if content.lut is not None:
            values = content.lut.apply(values)
        # P-values to density between Min and Max Density, density to the file's gray.
        low, high = content.min_density, content.max_density
        density = high - values * (high - low)
        span = max(densities.maximum - densities.minimum, 1)
        gray = np.clip((densities.maximum - density) / span, 0.0, 1.0)
        picture = Image.fromarray(np.rint(gray * 255).astype(np.uint8), "L")
        if color:
            picture = picture.convert("RGB")
    if placement.crop is not None:
        vertical, horizontal = image.aspect_ratio
        left, top, right, bottom = placement.crop
        to_rows = horizontal / vertical  # crop heights are in pixel widths
        picture = picture.crop(
            (round(left), round(top * to_rows), round(right), round(bottom * to_rows))
        )
    size = (placement.width, placement.height)
    if picture.size != size:
        picture = picture.resize(size, _FILTERS[content.magnification_type])
    return picture


def save_png(film: Image.Image, path: Path, dpi: int) -> None:
    """Write the film as a PNG at `path`, whole or not at all (temporary file, fsync, rename)."""
    partial = path.with_name(f".{path.name}.part")
    with partial.open("wb") as stream:
        film.save(stream, "PNG", dpi=(dpi, dpi))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def save_pdf(pages: Sequence[tuple[Path, int]], path: Path, title: str) -> None:
    """Write the PNG films `pages` ((path, dpi) in order) as one PDF, one page per film at its
    own size; replaces `path` whole."""
    partial = path.with_name(f".{path.name}.part")
    for number, (png, dpi) in enumerate(pages):
        with Image.open(png) as film:
            film.load()
            options = {"resolution": float(dpi), "title": title, "creator": "pacsd"}
            film.save(partial, "PDF", append=number > 0, **options)
    with partial.open("rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(partial, path)
