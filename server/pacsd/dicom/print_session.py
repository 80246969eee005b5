"""The print objects of one association (PS3.4 H.2.2): the Film Session hierarchy and the
Presentation LUTs, held in memory, and what each N-service does to them.

A Basic Film Session lives as long as its association (PS3.4 H.4.1.2.1: what it holds "shall be
released following termination of the Association or deletion of the Film Session SOP
Instance"); the service forgets a `PrintState` when the association ends. A Film Box's
N-CREATE makes its Image Boxes, one per position of its Image Display Format (H.4.2.2.1). A
Presentation LUT is no part of the hierarchy; an N-DELETE removes it from the association, and
a Film Box or Image Box that refers to it keeps it until it goes too (not deleted while
referenced). Nothing here does I/O: printing is print_output.py's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsd.dicom.print_attributes import (
    CLASS_INSTANCE_CONFLICT,
    COLOR_IMAGE_BOX,
    DUPLICATE_SOP_INSTANCE,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    IMAGE_BOX_POSITION,
    INSUFFICIENT_MEMORY,
    INVALID_ATTRIBUTE_VALUE,
    INVALID_SOP_INSTANCE,
    NO_SUCH_SOP_INSTANCE,
    PRESENTATION_LUT,
    PRINTER_CLASS,
    PRINTER_CONFIGURATION,
    PRINTER_CONFIGURATION_INSTANCE,
    PRINTER_INSTANCE,
    PROCESSING_FAILURE,
    REFERENCED_FILM_SESSION,
    FilmBoxAttributes,
    FilmSessionAttributes,
    ImageBoxAttributes,
    PrinterProfile,
    PrintRefused,
)
from pacsd.dicom.print_image import PresentationLut, PrintImage, decode_image, presentation_lut
from pacsd.dicom.print_jobs import PrintJob, is_uid, now
from pacsd.dicom.print_layout import MM_PER_INCH, Rect, display_format, image_boxes, page_mm
from pacsd.dicom.print_render import BoxImage, DensityRange, FilmPage, placements
from pacsd.dicom.print_validation import (
    check_densities,
    film_box_create,
    film_box_set,
    film_session,
    image_box_set,
    referenced_film_session,
)

REFERENCED_PRESENTATION_LUT = 0x20500500


@dataclass
class ImageBox:
    """A Basic Grayscale or Color Image Box (PS3.4 H.4.3)."""

    uid: str
    sop_class: str
    position: int
    attributes: ImageBoxAttributes = field(default_factory=ImageBoxAttributes)
    image: PrintImage | None = None
    lut: PresentationLut | None = None


@dataclass
class FilmBox:
    """A Basic Film Box (PS3.4 H.4.2) and its Image Boxes, by position."""

    uid: str
    color: bool
    attributes: FilmBoxAttributes
    boxes_mm: list[Rect]
    image_boxes: list[ImageBox]
    lut: PresentationLut | None = None

    def dpi(self, profile: PrinterProfile) -> int:
        """Printer pixels per inch: Requested Resolution ID STANDARD or HIGH."""
        high = self.attributes.requested_resolution_id == "HIGH"
        return profile.high_dpi if high else profile.standard_dpi

    def page(self, profile: PrinterProfile) -> FilmPage:
        """Its page, as the renderer needs it."""
        attributes, dpi = self.attributes, self.dpi(profile)
        width, height = page_mm(attributes.film_size_id, attributes.film_orientation)
        densities = DensityRange(profile.min_density, profile.max_density)
        return FilmPage(
            size=(round(width * dpi / MM_PER_INCH), round(height * dpi / MM_PER_INCH)),
            dpi=dpi,
            boxes=[rect.pixels(dpi) for rect in self.boxes_mm],
            color=self.color,
            border=densities.named(attributes.border_density),
            empty=densities.named(attributes.empty_image_density),
            trim=attributes.trim == "YES",
        )

    def contents(self, profile: PrinterProfile) -> list[BoxImage | None]:
        """What each Image Box shows, the film box's values where the box has none."""
        film, dpi = self.attributes, self.dpi(profile)
        return [
            None
            if box.image is None
            else BoxImage(
                image=box.image,
                polarity=box.attributes.polarity,
                magnification_type=box.attributes.magnification_type or film.magnification_type,
                min_density=_first(box.attributes.min_density, film.min_density),
                max_density=_first(box.attributes.max_density, film.max_density),
                requested_width=(
                    None
                    if box.attributes.requested_image_size is None
                    else box.attributes.requested_image_size * dpi / MM_PER_INCH
                ),
                behaviour=box.attributes.decimate_crop,
                lut=box.lut or self.lut,
            )
            for box in self.image_boxes
        ]

    @property
    def empty(self) -> bool:
        """No Image Box has an image (an empty page, 0xB602 / 0xB603)."""
        return all(box.image is None for box in self.image_boxes)


def _first(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass
class FilmSession:
    """A Basic Film Session (PS3.4 H.4.1) and its Film Boxes, in the order created."""

    uid: str
    attributes: FilmSessionAttributes
    created: str = field(default_factory=now)
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)
    job: PrintJob | None = None  # once something printed


@dataclass
class PrintState:
    """Everything one association made: its Film Session, if any, and its Presentation LUTs."""

    profile: PrinterProfile
    uid_root: str
    little_endian: bool = True
    session: FilmSession | None = None
    luts: dict[str, PresentationLut] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def class_of(self, uid: str) -> str | None:
        """The SOP class of the instance `uid` on this association, None if there is none."""
        well_known = {
            PRINTER_INSTANCE: PRINTER_CLASS,
            PRINTER_CONFIGURATION_INSTANCE: PRINTER_CONFIGURATION,
        }
        if uid in well_known:
            return well_known[uid]
        if uid in self.luts:
            return PRESENTATION_LUT
        session = self.session
        if session is None:
            return None
        if uid == session.uid:
            return FILM_SESSION
        for film_box in session.film_boxes.values():
            if uid == film_box.uid:
                return FILM_BOX
            for box in film_box.image_boxes:
                if uid == box.uid:
                    return box.sop_class
        return None

    def check_instance(self, uid: str, sop_class: str) -> None:
        """0x0112 when `uid` names nothing here, 0x0119 when it names another class's."""
        found = self.class_of(uid)
        if found is None:
            raise PrintRefused(NO_SUCH_SOP_INSTANCE, f"no instance {uid} on this association")
        if found != sop_class:
            raise PrintRefused(CLASS_INSTANCE_CONFLICT, f"instance {uid} is of another class")

    def new_uid(self, requested: str) -> str:
        """The UID of a new instance: the SCU's (0x0117 malformed, 0x0111 in use) or pacsd's."""
        if not requested:
            return str(generate_uid(self.uid_root))
        if not is_uid(requested):
            raise PrintRefused(INVALID_SOP_INSTANCE, f"{requested!r} is not a UID")
        if self.class_of(requested) is not None:
            raise PrintRefused(DUPLICATE_SOP_INSTANCE, f"instance {requested} exists")
        return requested

    def film_session(self, uid: str) -> FilmSession:
        """The Film Session `uid` (0x0112 / 0x0119 otherwise)."""
        self.check_instance(uid, FILM_SESSION)
        assert self.session is not None
        return self.session

    def film_box(self, uid: str) -> FilmBox:
        """The Film Box `uid` (0x0112 / 0x0119 otherwise)."""
        self.check_instance(uid, FILM_BOX)
        assert self.session is not None
        return self.session.film_boxes[uid]

    def image_box(self, uid: str, sop_class: str) -> tuple[FilmBox, ImageBox]:
        """The Image Box `uid` of class `sop_class`, with its Film Box."""
        self.check_instance(uid, sop_class)
        assert self.session is not None
        for film_box in self.session.film_boxes.values():
            for box in film_box.image_boxes:
                if box.uid == uid:
                    return film_box, box
        raise PrintRefused(NO_SUCH_SOP_INSTANCE, f"no image box {uid}")

    def lut(self, uid: str) -> PresentationLut | None:
        """The Presentation LUT a Referenced Presentation LUT Sequence names ("" for none)."""
        if not uid:
            return None
        if uid not in self.luts:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                f"no Presentation LUT {uid} on this association",
                [REFERENCED_PRESENTATION_LUT],
            )
        return self.luts[uid]

    def memory(self) -> int:
        """Bytes of images the Film Session holds."""
        if self.session is None:
            return 0
        return sum(
            box.image.nbytes
            for film_box in self.session.film_boxes.values()
            for box in film_box.image_boxes
            if box.image is not None
        )

    # The N-services, each under `lock` (held by the caller).

    def create_session(self, requested_uid: str, attributes: Dataset) -> tuple[FilmSession, int]:
        """N-CREATE of the Basic Film Session (one per association: 0x0110 for a second)."""
        if self.session is not None:
            raise PrintRefused(
                PROCESSING_FAILURE, "a Basic Film Session exists on this association (H.4.1)"
            )
        defaults = FilmSessionAttributes(medium_type=self.profile.medium_type)
        values, status = film_session(attributes, defaults)
        self.session = FilmSession(self.new_uid(requested_uid), values)
        return self.session, status

    def set_session(self, uid: str, attributes: Dataset) -> tuple[FilmSession, int]:
        """N-SET of the Basic Film Session."""
        session = self.film_session(uid)
        session.attributes, status = film_session(attributes, session.attributes)
        return session, status

    def create_film_box(
        self, requested_uid: str, attributes: Dataset, color: bool
    ) -> tuple[FilmBox, int]:
        """N-CREATE of a Basic Film Box in the Film Session it names, with its Image Boxes."""
        profile = self.profile
        defaults = FilmBoxAttributes(
            film_size_id=profile.film_size_id,
            magnification_type=profile.magnification_type,
            min_density=profile.min_density,
            max_density=profile.max_density,
            border_density=profile.border_density,
            empty_image_density=profile.empty_image_density,
        )
        values = film_box_create(attributes, defaults)
        session = self.session
        if session is None or referenced_film_session(attributes) != session.uid:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                "ReferencedFilmSessionSequence names no Film Session of this association",
                [REFERENCED_FILM_SESSION],
            )
        layout = display_format(values.image_display_format)
        low, high, status = check_densities(values.min_density, values.max_density, profile)
        values = replace(values, min_density=low, max_density=high)
        lut = self.lut(values.presentation_lut_uid)
        uid = self.new_uid(requested_uid)
        rects = image_boxes(layout, page_mm(values.film_size_id, values.film_orientation))
        box_class = COLOR_IMAGE_BOX if color else GRAYSCALE_IMAGE_BOX
        boxes = [
            ImageBox(str(generate_uid(self.uid_root)), box_class, position)
            for position in range(1, len(rects) + 1)
        ]
        film_box = FilmBox(uid, color, values, rects, boxes, lut)
        session.film_boxes[uid] = film_box
        return film_box, status

    def set_film_box(self, uid: str, attributes: Dataset) -> tuple[FilmBox, int]:
        """N-SET of a Basic Film Box."""
        film_box = self.film_box(uid)
        values = film_box_set(attributes, film_box.attributes)
        low, high, status = check_densities(values.min_density, values.max_density, self.profile)
        values = replace(values, min_density=low, max_density=high)
        if attributes.get("ReferencedPresentationLUTSequence"):
            film_box.lut = self.lut(values.presentation_lut_uid)
        film_box.attributes = values
        return film_box, status

    def set_image_box(self, uid: str, sop_class: str, attributes: Dataset) -> tuple[ImageBox, int]:
        """N-SET of an Image Box: its image and presentation (H.4.3.1.2.1)."""
        film_box, box = self.image_box(uid, sop_class)
        color = sop_class == COLOR_IMAGE_BOX
        values, position, item = image_box_set(attributes, box.attributes, color)
        if position != box.position:
            raise PrintRefused(
                INVALID_ATTRIBUTE_VALUE,
                f"ImageBoxPosition {position}: this image box is at {box.position}",
                [IMAGE_BOX_POSITION],
            )
        image = decode_image(item, color, self.little_endian)
        held = self.memory() - (box.image.nbytes if box.image is not None else 0)
        if held + image.nbytes > self.profile.max_session_memory:
            raise PrintRefused(
                INSUFFICIENT_MEMORY,
                f"the film session may hold {self.profile.max_session_memory} bytes of images",
            )
        density_status = 0
        if values.min_density is not None or values.max_density is not None:
            low, high, density_status = check_densities(
                _first(values.min_density, film_box.attributes.min_density),
                _first(values.max_density, film_box.attributes.max_density),
                self.profile,
            )
            values = replace(values, min_density=low, max_density=high)
        lut = box.lut
        if attributes.get("ReferencedPresentationLUTSequence"):
            lut = self.lut(values.presentation_lut_uid)
        updated = ImageBox(box.uid, box.sop_class, box.position, values, image, lut)
        index = film_box.image_boxes.index(box)
        placement_status = self._placement_status(film_box, index, updated)
        film_box.image_boxes[index] = updated
        return updated, placement_status or density_status

    def _placement_status(self, film_box: FilmBox, index: int, box: ImageBox) -> int:
        """How `box` would land at `index` of `film_box`: 0 or 0xB6xx; raises 0xC603 when
        its image may be neither demagnified nor cropped."""
        alone = replace(film_box, image_boxes=[box])
        page = film_box.page(self.profile)
        page = replace(page, boxes=[page.boxes[index]])
        placement = placements(page, alone.contents(self.profile))[0]
        return placement.status if placement is not None else 0

    def delete_film_box(self, uid: str) -> None:
        """N-DELETE of a Basic Film Box and its Image Boxes."""
        self.film_box(uid)
        assert self.session is not None
        del self.session.film_boxes[uid]

    def delete_session(self, uid: str) -> FilmSession:
        """N-DELETE of the Basic Film Session and its hierarchy."""
        session = self.film_session(uid)
        self.session = None
        return session

    def create_lut(self, requested_uid: str, attributes: Dataset) -> str:
        """N-CREATE of a Presentation LUT."""
        lut = presentation_lut(attributes, self.little_endian)
        uid = self.new_uid(requested_uid)
        self.luts[uid] = lut
        return uid

    def delete_lut(self, uid: str) -> None:
        """N-DELETE of a Presentation LUT."""
        self.check_instance(uid, PRESENTATION_LUT)
        del self.luts[uid]
