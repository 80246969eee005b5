"""Image Box pixels and Presentation LUTs: checked, decoded, turned into film values
(PS3.4 H.4.3, H.4.9; PS3.3 C.13.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsd.dicom.print_attributes import PrintRefused
from pacsd.dicom.print_image import (
    color_values,
    decode_image,
    grayscale_values,
    presentation_lut,
)


def gray_item(pixels: NDArray[Any], bits_stored: int = 8, **values: Any) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows, item.Columns = pixels.shape
    item.BitsAllocated = 8 if bits_stored == 8 else 16
    item.BitsStored = bits_stored
    item.HighBit = bits_stored - 1
    item.PixelRepresentation = 0
    item.PixelData = pixels.astype(np.uint8 if bits_stored == 8 else "<u2").tobytes()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def test_eight_bit_grayscale() -> None:
    """8 bits: 0 is black, 255 white."""
    image = decode_image(gray_item(np.array([[0, 255], [51, 102]])), color=False)
    assert (image.rows, image.columns, image.bits_stored) == (2, 2, 8)
    assert grayscale_values(image) == pytest.approx(np.array([[0.0, 1.0], [0.2, 0.4]]))


def test_twelve_bit_grayscale_masks_bits_above_high_bit() -> None:
    """12 bits in 16: values scale over 4095; bits above High Bit are not the pixel's."""
    pixels = np.array([[4095, 0xF000 | 4095], [0, 2048]])
    image = decode_image(gray_item(pixels, bits_stored=12), color=False)
    assert image.stored.tolist() == [[4095, 4095], [0, 2048]]
    assert grayscale_values(image)[1, 1] == pytest.approx(2048 / 4095)


def test_monochrome1_is_turned_over() -> None:
    """MONOCHROME1: the lowest value is white."""
    item = gray_item(np.array([[0, 255]]), PhotometricInterpretation="MONOCHROME1")
    assert grayscale_values(decode_image(item, color=False)).tolist() == [[1.0, 0.0]]


def test_windowing_in_the_item_is_applied() -> None:
    """A VOI window the item carries (PS3.3 C.11.2) maps the values before printing."""
    item = gray_item(np.array([[0, 90, 160, 255]]), WindowCenter=125, WindowWidth=51)
    values = grayscale_values(decode_image(item, color=False))
    assert values[0, 0] == 0.0
    assert values[0, 3] == 1.0
    assert values[0, 1] == pytest.approx(0.0)
    assert values[0, 2] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("keyword", "value", "tag"),
    [
        ("SamplesPerPixel", 3, 0x00280002),
        ("PhotometricInterpretation", "RGB", 0x00280004),
        ("BitsStored", 10, 0x00280101),
        ("HighBit", 6, 0x00280102),
        ("PixelRepresentation", 1, 0x00280103),
        ("PixelAspectRatio", [0, 1], 0x00280034),
    ],
)
def test_grayscale_image_refusals(keyword: str, value: Any, tag: int) -> None:
    """PS3.3 C.13.5: 8 bits in 8 or 12 in 16, unsigned, one sample; else 0x0106 with the tag."""
    item = gray_item(np.zeros((2, 2)), **{keyword: value})
    with pytest.raises(PrintRefused) as refused:
        decode_image(item, color=False)
    assert (refused.value.status, refused.value.tags) == (0x0106, [tag])


def test_missing_image_attribute() -> None:
    """An attribute of the image sequence missing: 0x0120 with its tag."""
    item = gray_item(np.zeros((2, 2)))
    del item.Rows
    with pytest.raises(PrintRefused) as refused:
        decode_image(item, color=False)
    assert (refused.value.status, refused.value.tags) == (0x0120, [0x00280010])


def test_pixel_data_of_the_wrong_length() -> None:
    """Pixel Data shorter than Rows x Columns: 0x0106 on Pixel Data."""
    item = gray_item(np.zeros((4, 4)))
    item.Rows = 8
    with pytest.raises(PrintRefused) as refused:
        decode_image(item, color=False)
    assert refused.value.tags == [0x7FE00010]


def test_color_by_pixel_and_by_plane_decode_alike() -> None:
    """RGB 8 bits, Planar Configuration 1 (by plane, PS3.3 C.13.5) or 0 (by pixel)."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)

    def item(planar: int) -> Dataset:
        ds = Dataset()
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = planar
        ds.Rows = ds.Columns = 2
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = (rgb.transpose(2, 0, 1) if planar else rgb).tobytes()
        return ds

    by_plane, by_pixel = decode_image(item(1), color=True), decode_image(item(0), color=True)
    assert by_plane.stored.tolist() == by_pixel.stored.tolist() == rgb.tolist()
    assert color_values(by_plane)[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_pixel_aspect_ratio() -> None:
    """Pixel Aspect Ratio 2\\1: pixels twice as tall as wide."""
    image = decode_image(gray_item(np.zeros((10, 10)), PixelAspectRatio=[2, 1]), color=False)
    assert image.natural_size() == (10.0, 20.0)


def test_presentation_lut_shapes() -> None:
    """IDENTITY keeps the values; INVERSE and LIN OD (input linear in density) turn them over."""
    values = np.array([0.0, 0.25, 1.0])
    identity = presentation_lut(_lut(PresentationLUTShape="IDENTITY"))
    assert identity.apply(values).tolist() == [0.0, 0.25, 1.0]
    for shape in ("INVERSE", "LIN OD"):
        assert presentation_lut(_lut(PresentationLUTShape=shape)).apply(values).tolist() == [
            1.0,
            0.75,
            0.0,
        ]


def test_presentation_lut_table() -> None:
    """A LUT of 256 12-bit entries maps the values."""
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.LUTData = [4095 - 16 * index for index in range(256)]
    lut = presentation_lut(_lut(PresentationLUTSequence=Sequence([item])))
    assert lut.apply(np.array([0.0, 1.0])) == pytest.approx([1.0, (4095 - 16 * 255) / 4095])


def _lut(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_presentation_lut_refusals() -> None:
    """Neither shape nor table 0x0120; both, an unknown shape or a bad table 0x0106."""
    with pytest.raises(PrintRefused) as none:
        presentation_lut(Dataset())
    assert none.value.status == 0x0120
    with pytest.raises(PrintRefused) as unknown:
        presentation_lut(_lut(PresentationLUTShape="GAMMA"))
    assert (unknown.value.status, unknown.value.tags) == (0x0106, [0x20500020])
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.LUTData = [0] * 100
    with pytest.raises(PrintRefused) as short:
        presentation_lut(_lut(PresentationLUTSequence=Sequence([item])))
    assert (short.value.status, short.value.tags) == (0x0106, [0x20500010])
    with pytest.raises(PrintRefused) as both:
        presentation_lut(
            _lut(PresentationLUTShape="IDENTITY", PresentationLUTSequence=Sequence([item]))
        )
    assert both.value.status == 0x0106
