"""Accept headers and transfer syntaxes of WADO-RS (PS3.18 8.7: acceptable media types).

A multipart Accept value names the media type of its parts in `type` and may name a
`transfer-syntax`: "*" is the syntax as stored (8.7.3.5.2), a UID asks for that syntax, and
none means the default of the media type (Explicit VR Little Endian for application/dicom and
application/octet-stream, Table 8.7.3-2). The media types of compressed pixel data are those
of PS3.18 Table 8.7.3-5 (image/jpeg, image/jls, image/jp2, ...). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
AS_STORED = "*"
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

# PS3.18 Table 8.7.3-5: the media type of a frame or of bulk pixel data in a compressed syntax.
PIXEL_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}
ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


@dataclass(frozen=True)
class MediaRange:
    """One acceptable representation: the media type (of the parts, for multipart) and the
    transfer syntax asked for (None: the media type's default; "*": as stored)."""

    media_type: str
    transfer_syntax: str | None
    quality: float
    multipart: bool

    def fits(self, media_type: str) -> bool:
        """Whether `media_type` is within this range (*/*, image/*, or the type itself)."""
        if self.media_type in ("*/*", "*"):
            return True
        if self.media_type.endswith("/*"):
            return media_type.startswith(self.media_type[:-1])
        return ALIASES.get(self.media_type, self.media_type) == media_type


def _parameters(parts: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in parts:
        name, _, value = part.partition("=")
        found[name.strip().lower()] = value.strip().strip('"')
    return found


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best quality first (absent: anything, as */*)."""
    if not header or not header.strip():
        return [MediaRange("*/*", None, 1.0, True)]
    ranges: list[MediaRange] = []
    for value in _split(header):
        media_type, *rest = (piece.strip() for piece in value.split(";"))
        parameters = _parameters(rest)
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            quality = 1.0
        media_type = media_type.lower()
        if media_type == "multipart/related":
            part_type = parameters.get("type", "*/*").lower()
            ranges.append(MediaRange(part_type, parameters.get("transfer-syntax"), quality, True))
        else:
            syntax = parameters.get("transfer-syntax")
            ranges.append(MediaRange(media_type, syntax, quality, False))
    return sorted((r for r in ranges if r.quality > 0), key=lambda r: -r.quality)


def _split(header: str) -> list[str]:
    """The comma-separated values of a header, commas inside quotes kept."""
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    return [value.strip() for value in values if value.strip()]


def dicom_syntaxes(ranges: Sequence[MediaRange]) -> list[str] | None:
    """The transfer syntaxes acceptable for application/dicom parts, best first, "*" for as
    stored; None when no range accepts application/dicom (406)."""
    syntaxes: list[str] = []
    for media in ranges:
        if media.fits(DICOM) and (media.multipart or media.media_type == "*/*"):
            syntax = media.transfer_syntax
            if syntax is None:
                # Table 8.7.3-2: default Explicit VR Little Endian; */* is anything, as stored.
                syntax = AS_STORED if media.media_type == "*/*" else EXPLICIT_VR_LITTLE_ENDIAN
            syntaxes.append(syntax)
    return list(dict.fromkeys(syntaxes)) or None


def accepts_json(header: str | None) -> bool:
    """Whether application/dicom+json (or application/json) is acceptable."""
    return any(
        media.fits("application/dicom+json") or media.fits("application/json")
        for media in parse_accept(header)
    )


@dataclass(frozen=True)
class PixelChoice:
    """How frames or pixel bulk data go: compressed as stored (its media type), or native
    (application/octet-stream, Explicit VR Little Endian)."""

    as_stored: bool
    media_type: str
    transfer_syntax: str


def pixel_choice(
    ranges: Sequence[MediaRange], stored: str, encapsulated: bool
) -> PixelChoice | None:
    """The representation of the frames of an instance stored in `stored`, per PS3.18 8.7.3.5
    (Table 8.7.3-5); None when neither the stored form nor native data is acceptable."""
    stored_type = PIXEL_MEDIA_TYPES.get(stored, OCTET_STREAM) if encapsulated else OCTET_STREAM
    for media in ranges:
        if not media.multipart and media.media_type != "*/*":
            continue
        syntax = media.transfer_syntax
        compressed_fits = media.fits(stored_type) and media.media_type != OCTET_STREAM
        if encapsulated and compressed_fits and syntax in (None, AS_STORED, stored):
            return PixelChoice(True, stored_type, stored)
        if media.fits(OCTET_STREAM) and syntax in (None, AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN):
            return PixelChoice(False, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
    return None
