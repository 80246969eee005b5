"""The pixels of an Image Box and the Presentation LUT (PS3.4 H.4.3, H.4.9): checked, decoded,
and turned into the values a film shows.

The Basic Grayscale Image Sequence carries 8 bits in 8 or 12 bits in 16, unsigned, MONOCHROME1
or MONOCHROME2; the Basic Color Image Sequence 8-bit RGB (PS3.3 C.13.5; as DCMTK's dcmprscp
checks them). Where the item also carries a Modality LUT or VOI LUT (Rescale, Window, LUT
Sequences), pydicom's functions apply them (PS3.4 N.2 order: modality, VOI, then polarity and the
Presentation LUT, H.2.1.2). What comes out is a fraction of the brightest value: 1.0 is the
lightest a film shows (P-value maximum), 0.0 the darkest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from pacsd.dicom.print_attributes import (
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    PrintRefused,
    name_of,
)

SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC = 0x00280004
PLANAR_CONFIGURATION = 0x00280006
ROWS, COLUMNS = 0x00280010, 0x00280011
PIXEL_ASPECT_RATIO = 0x00280034
BITS_ALLOCATED, BITS_STORED, HIGH_BIT = 0x00280100, 0x00280101, 0x00280102
PIXEL_REPRESENTATION = 0x00280103
PIXEL_DATA = 0x7FE00010
PRESENTATION_LUT_SEQUENCE = 0x20500010
PRESENTATION_LUT_SHAPE = 0x20500020
# The Modality and VOI LUT attributes pydicom's functions read from the item.
_LUT_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
# PS3.3 C.11.4: IDENTITY (input is in P-values), LIN OD (input is linear in optical density);
# INVERSE (C.11.6: P-value = maximum - input) is accepted as well.
LUT_SHAPES = ("IDENTITY", "LIN OD", "INVERSE")
MAX_LUT_ENTRIES = 65536

Pixels = NDArray[np.float64]


@dataclass(frozen=True)
class PrintImage:
    """A decoded image of an Image Box: stored values (rows x columns [x 3]) and how to read
    them."""

    stored: NDArray[np.uint16] | NDArray[np.uint8]
    bits_stored: int
    color: bool
    monochrome1: bool = False
    aspect_ratio: tuple[int, int] = (1, 1)  # vertical \ horizontal (PS3.3 C.7.6.3.1.7)
    luts: Dataset | None = None  # the item's Modality / VOI LUT attributes, if any

    @property
    def rows(self) -> int:
        """Rows of pixels."""
        return int(self.stored.shape[0])

    @property
    def columns(self) -> int:
        """Columns of pixels."""
        return int(self.stored.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory the image holds."""
        return int(self.stored.nbytes)

    def natural_size(self) -> tuple[float, float]:
        """(width, height) in pixel widths, the pixel aspect ratio applied."""
        vertical, horizontal = self.aspect_ratio
        return float(self.columns), self.rows * vertical / horizontal


@dataclass(frozen=True)
class PresentationLut:
    """A Presentation LUT instance (PS3.4 H.4.9): a shape, or a table of `bits`-bit entries."""

    shape: str = "IDENTITY"
    table: NDArray[np.float64] | None = None  # entries scaled to 0..1

    def apply(self, values: Pixels) -> Pixels:
        """P-values (0..1) from polarity-corrected values (0..1), as the printer reads them."""
        if self.table is not None:
            index = np.rint(values * (len(self.table) - 1)).astype(np.intp)
            return np.asarray(self.table[index], dtype=np.float64)
        if self.shape in ("INVERSE", "LIN OD"):
            # LIN OD: the input is density, linear between Min and Max Density: the highest
            # input is the darkest, as INVERSE's (this renderer's densities are linear).
            return 1.0 - values
        return values


def _value(item: Dataset, tag: int) -> Any:
    """The value of `tag` in the image item: 0x0120 absent, 0x0106 when it does not decode."""
    if tag not in item:
        raise PrintRefused(MISSING_ATTRIBUTE, f"image sequence: {name_of(tag)} missing", [tag])
    try:
        return item[tag].value
    except (ValueError, TypeError, OverflowError) as exc:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"{name_of(tag)} does not decode: {exc}", [tag]
        ) from None


def _number(item: Dataset, tag: int, allowed: tuple[int, ...] | None = None) -> int:
    value = _value(item, tag)
    if value is None or value == "":
        raise PrintRefused(MISSING_ATTRIBUTE_VALUE, f"{name_of(tag)} empty", [tag])
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if (allowed is not None and number not in allowed) or number < 0:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"{name_of(tag)} {value!r} is not supported", [tag]
        )
    return number


def _photometric(item: Dataset, color: bool) -> bool:
    """True for MONOCHROME1 (the lowest value is white)."""
    value = str(_value(item, PHOTOMETRIC)).strip()
    allowed = ("RGB",) if color else ("MONOCHROME1", "MONOCHROME2")
    if value not in allowed:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            f"PhotometricInterpretation {value!r} is not {' or '.join(allowed)}",
            [PHOTOMETRIC],
        )
    return value == "MONOCHROME1"


def _aspect_ratio(item: Dataset) -> tuple[int, int]:
    values = _value(item, PIXEL_ASPECT_RATIO) if PIXEL_ASPECT_RATIO in item else None
    if not values:
        return 1, 1
    try:
        vertical, horizontal = (int(value) for value in values)
    except (TypeError, ValueError):
        vertical = horizontal = 0
    if vertical <= 0 or horizontal <= 0:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            "PixelAspectRatio must be two positive integers",
            [PIXEL_ASPECT_RATIO],
        )
    return vertical, horizontal


def decode_image(item: Dataset, color: bool, little_endian: bool = True) -> PrintImage:
    """The one item of a Basic Grayscale / Color Image Sequence, checked (0x0120, 0x0121,
    0x0106 with the tag at fault) and decoded."""
    _number(item, SAMPLES_PER_PIXEL, (3,) if color else (1,))
    monochrome1 = _photometric(item, color)
    rows, columns = _number(item, ROWS), _number(item, COLUMNS)
    if rows == 0 or columns == 0:
        raise PrintRefused(INVALID_ATTRIBUTE_VALUE, "Rows and Columns must be > 0", [ROWS, COLUMNS])
    allocated = _number(item, BITS_ALLOCATED, (8,) if color else (8, 16))
    stored = _number(item, BITS_STORED, (8,) if allocated == 8 else (12,))
    _number(item, HIGH_BIT, (stored - 1,))
    _number(item, PIXEL_REPRESENTATION, (0,))
    planar = _number(item, PLANAR_CONFIGURATION, (0, 1)) if color else 0
    aspect = _aspect_ratio(item)
    data = _value(item, PIXEL_DATA)
    if not isinstance(data, bytes) or not data:
        raise PrintRefused(MISSING_ATTRIBUTE_VALUE, "PixelData empty", [PIXEL_DATA])
    samples = 3 if color else 1
    expected = rows * columns * samples * allocated // 8
    if not expected <= len(data) <= expected + 1:  # PS3.5 8.1.1: one byte of padding
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            f"PixelData holds {len(data)} bytes, {rows}x{columns} needs {expected}",
            [PIXEL_DATA],
        )
    dtype = np.dtype(np.uint8) if allocated == 8 else np.dtype("<u2" if little_endian else ">u2")
    pixels = np.frombuffer(data[:expected], dtype=dtype)
    if color:
        shaped = (
            pixels.reshape(3, rows, columns).transpose(1, 2, 0)
            if planar
            else pixels.reshape(rows, columns, 3)
        )
        return PrintImage(np.ascontiguousarray(shaped), 8, True, aspect_ratio=aspect)
    # Bits above High Bit are not the pixel's (PS3.5 8.1.1).
    if allocated == 16:
        values: NDArray[np.uint16] | NDArray[np.uint8] = np.bitwise_and(
            pixels.reshape(rows, columns).astype(np.uint16), np.uint16((1 << stored) - 1)
        )
    else:
        values = pixels.reshape(rows, columns).astype(np.uint8)
    return PrintImage(values, stored, False, monochrome1, aspect, _luts(item))


def _luts(item: Dataset) -> Dataset | None:
    present = [keyword for keyword in _LUT_KEYWORDS if keyword in item]
    if not present:
        return None
    luts = Dataset()
    for keyword in (*present, "PhotometricInterpretation", "BitsStored", "PixelRepresentation"):
        setattr(luts, keyword, item.get(keyword))
    return luts


def grayscale_values(image: PrintImage) -> Pixels:
    """0..1 per pixel, after the item's Modality and VOI LUTs, MONOCHROME1 turned over."""
    values = image.stored.astype(np.float64)
    low, high = 0.0, float((1 << image.bits_stored) - 1)
    if image.luts is not None:
        try:
            values = apply_voi_lut(apply_modality_lut(values, image.luts), image.luts)
            low, high = _output_range(image.luts, image.bits_stored)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE, f"image LUTs cannot be applied: {exc}", [0x20200110]
            ) from None
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    return 1.0 - scaled if image.monochrome1 else scaled


def _output_range(luts: Dataset, bits_stored: int) -> tuple[float, float]:
    """The range the VOI (else the Modality) LUT's output spans (PS3.3 C.11.1, C.11.2)."""
    if luts.get("VOILUTSequence"):
        return 0.0, float(2 ** int(luts.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if luts.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(luts.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        low, high = 0.0, float(2**bits_stored - 1)
        slope, intercept = luts.get("RescaleSlope"), luts.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            low, high = sorted(
                (low * float(slope) + float(intercept), high * float(slope) + float(intercept))
            )
    return low, high  # windowing maps onto the same range (pydicom's apply_windowing)


def color_values(image: PrintImage) -> Pixels:
    """0..1 per RGB sample."""
    return image.stored.astype(np.float64) / 255.0


def presentation_lut(attributes: Dataset, little_endian: bool = True) -> PresentationLut:
    """N-CREATE of a Presentation LUT (PS3.4 H.4.9.2.1): a shape or one LUT item, not both
    (Presentation LUT Shape is 1C: required when the sequence is absent)."""
    sequence = attributes.get("PresentationLUTSequence")
    shape = str(attributes.get("PresentationLUTShape", "") or "").strip()
    if not sequence and not shape:
        raise PrintRefused(
            MISSING_ATTRIBUTE,
            "PresentationLUTShape or PresentationLUTSequence required",
            [PRESENTATION_LUT_SHAPE, PRESENTATION_LUT_SEQUENCE],
        )
    if sequence and shape:
        raise PrintRefused(
            INVALID_ATTRIBUTE_VALUE,
            "PresentationLUTShape and PresentationLUTSequence are exclusive",
            [PRESENTATION_LUT_SHAPE, PRESENTATION_LUT_SEQUENCE],
        )
    if shape:
        if shape not in LUT_SHAPES:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                f"PresentationLUTShape {shape!r} is not one of {', '.join(LUT_SHAPES)}",
                [PRESENTATION_LUT_SHAPE],
            )
        return PresentationLut(shape)
    return PresentationLut("TABLE", _lut_table(list(sequence), little_endian))


def _lut_table(items: list[Dataset], little_endian: bool) -> NDArray[np.float64]:
    """PS3.3 C.11.4: LUT Descriptor (entries, first input value 0, 10..16 bits) and LUT Data."""

    def refuse(why: str) -> PrintRefused:
        return PrintRefused(
            INVALID_ATTRIBUTE_VALUE, f"PresentationLUTSequence: {why}", [PRESENTATION_LUT_SEQUENCE]
        )

    if len(items) != 1:
        raise refuse("exactly one item")
    item = items[0]
    try:
        entries, first, bits = (int(value) for value in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise refuse("LUTDescriptor must be 3 numbers") from None
    entries = entries or MAX_LUT_ENTRIES  # PS3.3 C.11.1.1.1: 0 means 65536
    if first != 0 or not 10 <= bits <= 16:
        raise refuse("LUTDescriptor: first value mapped 0, 10..16 bits")
    data = item.get("LUTData")
    if data is None:
        raise refuse("LUTData missing")
    if isinstance(data, bytes):
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    else:
        table = np.asarray([data] if isinstance(data, int) else list(data), dtype=np.float64)
    if len(table) != entries:
        raise refuse(f"LUTData has {len(table)} entries, LUTDescriptor says {entries}")
    scaled: NDArray[np.float64] = np.clip(table.astype(np.float64) / (2**bits - 1), 0.0, 1.0)
    return scaled
