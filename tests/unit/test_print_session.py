"""The print objects of one association: instances, their classes, and the N-services' rules
(PS3.4 H.4.1-H.4.3, H.4.9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsd.dicom.print_attributes import (
    COLOR_IMAGE_BOX,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    PRESENTATION_LUT,
    PRINTER_CLASS,
    PRINTER_INSTANCE,
    PrinterProfile,
    PrintRefused,
)
from pacsd.dicom.print_session import PrintState

ROOT = "1.2.826.0.1.3680043.10.1307.9."


def state(**profile: Any) -> PrintState:
    return PrintState(PrinterProfile(**profile), ROOT)


def film_box_request(session_uid: str, layout: str = "STANDARD\\2,1", **values: Any) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = FILM_SESSION
    reference.ReferencedSOPInstanceUID = session_uid
    ds = Dataset()
    ds.ImageDisplayFormat = layout
    ds.ReferencedFilmSessionSequence = Sequence([reference])
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def image_request(position: int, size: int = 16, **values: Any) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows = item.Columns = size
    item.BitsAllocated = item.BitsStored = 8
    item.HighBit = 7
    item.PixelRepresentation = 0
    item.PixelData = np.zeros((size, size), np.uint8).tobytes()
    ds = Dataset()
    ds.ImageBoxPosition = position
    ds.BasicGrayscaleImageSequence = Sequence([item])
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def refusal(call: Any, *args: Any) -> PrintRefused:
    with pytest.raises(PrintRefused) as caught:
        call(*args)
    return caught.value


def test_hierarchy_and_classes() -> None:
    """A session, its film box and image boxes are found by UID, each of its class."""
    print_state = state()
    session, status = print_state.create_session("", Dataset())
    assert status == 0
    assert session.uid.startswith(ROOT)
    film_box, _ = print_state.create_film_box("1.2.3.4", film_box_request(session.uid), False)
    assert film_box.uid == "1.2.3.4"
    assert [box.position for box in film_box.image_boxes] == [1, 2]
    assert print_state.class_of(session.uid) == FILM_SESSION
    assert print_state.class_of("1.2.3.4") == FILM_BOX
    assert print_state.class_of(film_box.image_boxes[0].uid) == GRAYSCALE_IMAGE_BOX
    assert print_state.class_of(PRINTER_INSTANCE) == PRINTER_CLASS
    color_box, _ = print_state.create_film_box("", film_box_request(session.uid), True)
    assert color_box.image_boxes[0].sop_class == COLOR_IMAGE_BOX


def test_unknown_and_conflicting_instances() -> None:
    """0x0112 for a UID naming nothing, 0x0119 for one of another class (PS3.7 C.4)."""
    print_state = state()
    session, _ = print_state.create_session("", Dataset())
    assert refusal(print_state.film_box, "9.9.9").status == 0x0112
    assert refusal(print_state.film_box, session.uid).status == 0x0119
    assert refusal(print_state.check_instance, PRINTER_INSTANCE, FILM_SESSION).status == 0x0119


def test_one_film_session_per_association() -> None:
    """A second Film Session N-CREATE: 0x0110."""
    print_state = state()
    print_state.create_session("", Dataset())
    assert refusal(print_state.create_session, "", Dataset()).status == 0x0110


def test_uids_the_scu_chooses() -> None:
    """An SCU's UID in use 0x0111; one that is no UID 0x0117."""
    print_state = state()
    session, _ = print_state.create_session("1.2.3", Dataset())
    assert (
        refusal(print_state.create_film_box, "1.2.3", film_box_request("1.2.3"), False).status
        == 0x0111
    )
    assert refusal(print_state.create_lut, "1.2.x", _identity()).status == 0x0117
    assert session.uid == "1.2.3"


def test_film_box_must_name_this_session() -> None:
    """A Referenced Film Session Sequence naming another session: 0x0106."""
    print_state = state()
    print_state.create_session("1.2.3", Dataset())
    error = refusal(print_state.create_film_box, "", film_box_request("1.2.4"), False)
    assert (error.status, error.tags) == (0x0106, [0x20100500])


def test_image_box_position_must_be_its_own() -> None:
    """Image Box Position other than the box's: 0x0106 with its tag."""
    print_state = state()
    session, _ = print_state.create_session("", Dataset())
    film_box, _ = print_state.create_film_box("", film_box_request(session.uid), False)
    first = film_box.image_boxes[0]
    error = refusal(print_state.set_image_box, first.uid, GRAYSCALE_IMAGE_BOX, image_request(2))
    assert (error.status, error.tags) == (0x0106, [0x20200010])
    box, status = print_state.set_image_box(first.uid, GRAYSCALE_IMAGE_BOX, image_request(1))
    assert status == 0
    assert box.image is not None


def test_session_memory_limit() -> None:
    """Images beyond the film session's memory: 0xC605."""
    print_state = state(max_session_memory=300)
    session, _ = print_state.create_session("", Dataset())
    film_box, _ = print_state.create_film_box("", film_box_request(session.uid), False)
    first, second = film_box.image_boxes
    print_state.set_image_box(first.uid, GRAYSCALE_IMAGE_BOX, image_request(1))  # 256 bytes
    again, _ = print_state.set_image_box(first.uid, GRAYSCALE_IMAGE_BOX, image_request(1))
    assert again.image is not None  # replacing an image frees its memory first
    error = refusal(print_state.set_image_box, second.uid, GRAYSCALE_IMAGE_BOX, image_request(2))
    assert error.status == 0xC605


def test_image_too_large_with_fail() -> None:
    """Requested Image Size beyond its box with FAIL: 0xC603 at N-SET, nothing set."""
    print_state = state()
    session, _ = print_state.create_session("", Dataset())
    film_box, _ = print_state.create_film_box("", film_box_request(session.uid), False)
    request = image_request(1, RequestedImageSize="1000", RequestedDecimateCropBehavior="FAIL")
    uid = film_box.image_boxes[0].uid
    assert refusal(print_state.set_image_box, uid, GRAYSCALE_IMAGE_BOX, request).status == 0xC603
    assert film_box.image_boxes[0].image is None
    request.RequestedDecimateCropBehavior = "CROP"
    _, status = print_state.set_image_box(uid, GRAYSCALE_IMAGE_BOX, request)
    assert status == 0xB609


def _identity() -> Dataset:
    ds = Dataset()
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def test_presentation_lut_outlives_its_deletion_while_referenced() -> None:
    """A Film Box keeps the LUT it refers to after the LUT's N-DELETE; new references fail."""
    print_state = state()
    lut_uid = print_state.create_lut("", _identity())
    assert print_state.class_of(lut_uid) == PRESENTATION_LUT
    session, _ = print_state.create_session("", Dataset())
    reference = Dataset()
    reference.ReferencedSOPClassUID = PRESENTATION_LUT
    reference.ReferencedSOPInstanceUID = lut_uid
    film_box, _ = print_state.create_film_box(
        "",
        film_box_request(session.uid, ReferencedPresentationLUTSequence=Sequence([reference])),
        False,
    )
    print_state.delete_lut(lut_uid)
    assert film_box.lut is not None
    assert refusal(print_state.delete_lut, lut_uid).status == 0x0112
    again = Dataset()
    again.ReferencedPresentationLUTSequence = Sequence([reference])
    error = refusal(print_state.set_film_box, film_box.uid, again)
    assert (error.status, error.tags) == (0x0106, [0x20500500])


def test_density_warning_on_film_box() -> None:
    """Max Density beyond the printer's: the printer's, and 0xB605."""
    print_state = state(max_density=250)
    session, _ = print_state.create_session("", Dataset())
    film_box, status = print_state.create_film_box(
        "", film_box_request(session.uid, MaxDensity=320), False
    )
    assert status == 0xB605
    assert film_box.attributes.max_density == 250
