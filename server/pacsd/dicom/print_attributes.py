"""Print Management (PS3.4 H): SOP classes, well-known instances, statuses, defined terms, and
the attributes of a Film Session, Film Box and Image Box as in force (print_validation.py checks
what an SCU sends). A refusal is a `PrintRefused` with its PS3.4 H / PS3.7 status and the tags
at fault, which become the response's Attribute Identifier List.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag

from pacsd.dicom.sop_classes import (
    BASIC_COLOR_IMAGE_BOX,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    BASIC_GRAYSCALE_IMAGE_BOX,
    PRINTER,
)
from pacsd.errors import DicomStatusError

FILM_SESSION, FILM_BOX, PRINTER_CLASS = BASIC_FILM_SESSION, BASIC_FILM_BOX, PRINTER
GRAYSCALE_IMAGE_BOX, COLOR_IMAGE_BOX = BASIC_GRAYSCALE_IMAGE_BOX, BASIC_COLOR_IMAGE_BOX
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"  # PS3.4 H.4.9
PRINTER_CONFIGURATION = "1.2.840.10008.5.1.1.16.376"  # PS3.4 H.4.11
# Well-known SOP Instances (PS3.6 Table A-1).
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRINTER_CONFIGURATION_INSTANCE = "1.2.840.10008.5.1.1.17.376"
PRINT_ACTION = 1  # Action Type ID of N-ACTION (print), PS3.4 H.4.1.2.4 and H.4.2.2.4

# PS3.7 C.4 general statuses, and PS3.4 H service-class statuses.
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_SOP_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123
UNRECOGNIZED_OPERATION = 0x0211
MEMORY_ALLOCATION_NOT_SUPPORTED = 0xB600  # H.4.1.2.1.2
SESSION_EMPTY_PAGE = 0xB602  # H.4.1.2.4.2: a film of the session has no image
FILM_BOX_EMPTY_PAGE = 0xB603  # H.4.2.2.4.2
IMAGE_DEMAGNIFIED = 0xB604  # larger than its image box: demagnified (the default)
DENSITY_OUT_OF_RANGE = 0xB605  # Min / Max Density beyond the printer's: its own used instead
IMAGE_CROPPED = 0xB609  # Requested Decimate/Crop Behavior CROP
IMAGE_DECIMATED = 0xB60A  # Requested Decimate/Crop Behavior DECIMATE
NO_FILM_BOX = 0xC600  # H.4.1.2.4.2: a film session without film boxes cannot print
SESSION_QUEUE_FULL = 0xC601  # "unable to create Print Job SOP Instance; print queue is full"
FILM_BOX_QUEUE_FULL = 0xC602
IMAGE_TOO_LARGE = 0xC603  # Requested Decimate/Crop Behavior FAIL
INSUFFICIENT_MEMORY = 0xC605  # H.4.3.1.2.1.2: no room for the image in the film session

# PS3.3 C.13.1, C.13.3, C.13.5: enumerated values and defined terms.
PRINT_PRIORITIES = ("HIGH", "MED", "LOW")
MEDIUM_TYPES = ("PAPER", "CLEAR FILM", "BLUE FILM", "MAMMO CLEAR FILM", "MAMMO BLUE FILM")
FILM_ORIENTATIONS = ("PORTRAIT", "LANDSCAPE")
MAGNIFICATION_TYPES = ("REPLICATE", "BILINEAR", "CUBIC", "NONE")
RESOLUTION_IDS = ("STANDARD", "HIGH")
POLARITIES = ("NORMAL", "REVERSE")
DECIMATE_CROP = ("DECIMATE", "CROP", "FAIL")
YES_NO = ("YES", "NO")
# Film Size ID (C.13.3) -> width x height in millimetres, portrait.
FILM_SIZES_MM: dict[str, tuple[float, float]] = {
    "8INX10IN": (203.2, 254.0),
    "8_5INX11IN": (215.9, 279.4),
    "10INX12IN": (254.0, 304.8),
    "10INX14IN": (254.0, 355.6),
    "11INX14IN": (279.4, 355.6),
    "11INX17IN": (279.4, 431.8),
    "14INX14IN": (355.6, 355.6),
    "14INX17IN": (355.6, 431.8),
    "24CMX24CM": (240.0, 240.0),
    "24CMX30CM": (240.0, 300.0),
    "A4": (210.0, 297.0),
    "A3": (297.0, 420.0),
}
# Tags the checks name in their refusals.
MAX_DENSITY_VALUE = 1000  # hundredths of OD: nothing prints beyond 10 OD
IMAGE_DISPLAY_FORMAT = 0x20100010
REFERENCED_FILM_SESSION = 0x20100500
IMAGE_BOX_POSITION = 0x20200010
GRAYSCALE_IMAGE_SEQUENCE = 0x20200110
COLOR_IMAGE_SEQUENCE = 0x20200111


class PrintRefused(DicomStatusError):
    """A print request the rules refuse: its status and the attributes at fault."""

    def __init__(self, status: int, comment: str, tags: Iterable[int] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.tags: list[int] = list(dict.fromkeys(int(tag) for tag in tags))


def name_of(tag: int) -> str:
    """An attribute's keyword, else its tag as (gggg,eeee)."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass(frozen=True)
class PrinterProfile:
    """What the printer is and what it does when the SCU says nothing (PS3.4 H.2.4 "U/M")."""

    name: str = "PACSD"
    standard_dpi: int = 150
    high_dpi: int = 300
    film_size_id: str = "14INX17IN"
    medium_type: str = "BLUE FILM"
    magnification_type: str = "BILINEAR"
    border_density: str = "BLACK"
    empty_image_density: str = "BLACK"
    min_density: int = 20  # the printer's operating range, hundredths of OD
    max_density: int = 300
    max_session_memory: int = 256 * 1024**2  # bytes of images one film session may hold
    pdf: bool = True


@dataclass(frozen=True)
class FilmSessionAttributes:
    """PS3.3 C.13.1 Basic Film Session Presentation Module, as in force."""

    number_of_copies: int = 1
    print_priority: str = "MED"
    medium_type: str = "BLUE FILM"
    film_destination: str = "MAGAZINE"
    film_session_label: str = ""
    owner_id: str = ""


@dataclass(frozen=True)
class FilmBoxAttributes:
    """PS3.3 C.13.3 Basic Film Box Presentation Module, as in force."""

    image_display_format: str = "STANDARD\\1,1"
    film_orientation: str = "PORTRAIT"
    film_size_id: str = "14INX17IN"
    magnification_type: str = "BILINEAR"
    min_density: int = 20
    max_density: int = 300
    border_density: str = "BLACK"
    empty_image_density: str = "BLACK"
    trim: str = "NO"
    requested_resolution_id: str = "STANDARD"
    presentation_lut_uid: str = ""
    illumination: int | None = None  # cd/m2, recorded: P-values are not turned into light
    reflected_ambient_light: int | None = None


@dataclass(frozen=True)
class ImageBoxAttributes:
    """PS3.3 C.13.5 Image Box Pixel Presentation Module, other than the image, as in force."""

    polarity: str = "NORMAL"
    magnification_type: str = ""  # "": the film box's
    min_density: int | None = None  # None: the film box's
    max_density: int | None = None
    requested_image_size: float | None = None  # width in mm
    decimate_crop: str = ""  # "": DECIMATE, answered "demagnified" (0xB604)
    presentation_lut_uid: str = ""
