"""Transcoding stored instances for the C-STORE sub-operations of C-GET and C-MOVE.

A sub-operation must use a presentation context the receiver accepted for the SOP class (PS3.4
C.4.2.3 and C.4.3.3, SCP behaviour). When the stored one is accepted the caller
sends the file's bytes untouched. Otherwise the instance is decoded and re-encoded in an accepted
syntax that loses nothing more: uncompressed first, then a lossless compression (PS3.5 A.4) an
installed plugin can encode. pacsd never encodes to a lossy syntax; lossy stored data may still be
decoded, which adds no loss. When no conversion exists the sub-operation fails and the others go
on (PS3.4 C.4.2.1.5, Table C.4-2: "Sub-operations Complete - One or more Failures").
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from pacsd.dicom.integrity import check_dataset
from pacsd.dicom.part10 import open_dataset, read_layout
from pacsd.dicom.transfer_syntaxes import LOSSLESS, OTHER, UNCOMPRESSED, VIDEO
from pacsd.errors import DicomStatusError

# The uncompressed syntaxes pacsd writes, best first: Explicit VR keeps the VR of private
# elements that Implicit VR loses (PS3.5 A.1, A.2). Explicit VR Big Endian (PS3.5 A.3, retired)
# is left out: pydicom does not swap OW/OL/OF/OD/OV values when it writes another byte order.
WRITABLE_UNCOMPRESSED: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
# Byte size of the words of the VRs whose values keep the transfer syntax's byte order (PS3.5 7.3).
_WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_DATA = 0x7FE00010
_JPEG_YCBCR_TO_RGB = (JPEGBaseline8Bit, JPEGExtended12Bit)  # ISO 10918-1 lossy processes
# A Deflated data set is inflated in memory to be read at all; this only stops a deflate bomb.
_MAX_INFLATED_SIZE = 1 << 32
_EXTENDED_OFFSET_TABLE = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
# What pydicom and its codec plugins raise on data they cannot parse, decode or encode.
_CODEC_ERRORS = (
    ValueError,
    RuntimeError,
    AttributeError,
    NotImplementedError,
    KeyError,
    IndexError,
    TypeError,
    EOFError,
    OSError,
    struct.error,
    InvalidDicomError,
)


class TranscodeError(Exception):
    """No lossless-preserving conversion exists, or it failed.

    `str(exc)` is a short reason (at most 64 characters, an Error Comment (0000,0902) is LO).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason[:64])


def can_send_as_stored(stored: str, accepted: Sequence[str]) -> bool:
    """Whether the receiver accepted the stored transfer syntax, so the file goes as it is."""
    return stored in accepted


def can_decode(transfer_syntax: str) -> bool:
    """Whether pacsd can read pixel data encoded in `transfer_syntax` to native pixels."""
    return transfer_syntax in UNCOMPRESSED or _decoder_available(transfer_syntax)


def can_encode(transfer_syntax: str) -> bool:
    """Whether pacsd can write an instance in `transfer_syntax` without any loss."""
    if transfer_syntax in WRITABLE_UNCOMPRESSED:
        return True
    return transfer_syntax in LOSSLESS and _encoder_available(transfer_syntax)


def transfer_syntax_candidates(stored: str, accepted: Sequence[str]) -> list[str]:
    """Every syntax an instance stored in `stored` may be sent in, best first.

    The stored syntax when accepted; then the accepted uncompressed ones in pacsd's order; then
    the accepted lossless ones pacsd can encode, in the receiver's order. A caller may try the
    next one when `transcoded_dataset` fails for an image an encoder does not support.
    """
    candidates = [stored] if can_send_as_stored(stored, accepted) else []
    if not can_decode(stored):
        return candidates
    candidates += [uid for uid in WRITABLE_UNCOMPRESSED if uid in accepted]
    # Never a lossy syntax (PS3.3 C.7.6.1.1.5): LOSSLESS holds only the lossless ones.
    candidates += [uid for uid in accepted if uid in LOSSLESS and can_encode(uid)]
    return list(dict.fromkeys(candidates))


def choose_transfer_syntax(stored: str, accepted: Sequence[str]) -> str | None:
    """The transfer syntax to send an instance stored in `stored` to a receiver that accepted
    `accepted` (in the receiver's accepted order for this SOP class); None when no acceptable
    conversion exists."""
    candidates = transfer_syntax_candidates(stored, accepted)
    return candidates[0] if candidates else None


def transcoded_dataset(path: Path, target: str) -> Dataset:
    """Read the Part 10 file at `path` and return a Dataset whose encoding is `target`.

    `file_meta.TransferSyntaxUID` is `target`; pixel data is decompressed and/or recompressed
    as needed. The SOP Instance UID is kept: a lossless change of encoding is the same instance.
    Raises TranscodeError.
    """
    target_uid = UID(target)
    if not can_encode(target_uid):
        raise TranscodeError(_refusal(target_uid))
    ds = _read(path)
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored == ExplicitVRBigEndian:
        _to_little_endian(ds)
    if "PixelData" in ds and stored.is_encapsulated:
        _decompress(ds, stored)
    if "PixelData" in ds and target_uid.is_encapsulated:
        _compress(ds, target_uid)
    # PS3.5 A.4: outside encapsulated Pixel Data, an encapsulated syntax is Explicit VR Little
    # Endian, so an instance without pixel data only needs the new label.
    ds.file_meta.TransferSyntaxUID = target_uid
    return ds


def _read(path: Path) -> Dataset:
    """The data set of the Part 10 file at `path`, its file meta included (PS3.10 7.1).

    pydicom drops a truncated Pixel Data element with a mere warning, which would send an image
    without pixels; the structural check pacsd runs on receipt refuses such a file first.
    """
    try:
        with path.open("rb") as fp:
            layout = read_layout(fp)
            source = open_dataset(fp, layout, _MAX_INFLATED_SIZE)
            check_dataset(
                source.stream, source.start, source.end, source.explicit_vr, source.little_endian
            )
        return dcmread(path)
    except DicomStatusError as exc:
        raise TranscodeError(f"stored file: {exc.comment}") from exc
    except _CODEC_ERRORS as exc:
        raise TranscodeError("stored file cannot be read") from exc


def _decompress(ds: Dataset, stored: UID) -> None:
    """Decode encapsulated pixel data in place to native Explicit VR Little Endian."""
    if not can_decode(stored):
        raise TranscodeError(f"no decoder for {_label(stored)}")
    # Colour stays in its colour space (YBR_FULL stays YBR_FULL: a conversion would round),
    # except lossy JPEG YCbCr, which decoders conventionally turn into RGB (PS3.5 8.2.1), as
    # dcmdjpeg does; pydicom then relabels the Photometric Interpretation RGB.
    as_rgb = stored in _JPEG_YCBCR_TO_RGB
    try:
        ds.decompress(as_rgb=as_rgb, generate_instance_uid=False)
    except _CODEC_ERRORS as exc:
        raise TranscodeError(f"{_label(stored)} pixel data cannot be decoded") from exc
    _conform_decoded_pixel_module(ds)


def _conform_decoded_pixel_module(ds: Dataset) -> None:
    """Make the Image Pixel module describe the native pixel data pydicom decoded."""
    # pydicom's decoders return YBR_FULL_422 with its chroma upsampled but keep the label;
    # native YBR_FULL_422 is subsampled (PS3.3 C.7.6.3.1.2): that data is YBR_FULL.
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        ds.PhotometricInterpretation = "YBR_FULL"
    # The Extended Offset Table only indexes encapsulated fragments (PS3.5 A.4).
    for keyword in _EXTENDED_OFFSET_TABLE:
        if keyword in ds:
            delattr(ds, keyword)
    expected = get_expected_length(ds)
    if len(ds.PixelData) not in (expected, expected + expected % 2):
        raise TranscodeError("decoded pixel data does not fit the image module")


def _compress(ds: Dataset, target: UID) -> None:
    """Encode the native pixel data of `ds` in place with the lossless syntax `target`."""
    try:
        # pydicom mints a new SOP Instance UID by default: right after lossy compression
        # (PS3.3 C.7.6.1.1.5), wrong after a lossless one.
        ds.compress(target, generate_instance_uid=False)
    except _CODEC_ERRORS as exc:
        raise TranscodeError(f"this image cannot be encoded as {_label(target)}") from exc


def _to_little_endian(ds: Dataset) -> None:
    """Turn a data set read as Explicit VR Big Endian into Explicit VR Little Endian in place.

    pydicom parses numbers with the byte order they were read in; the values of OW, OL, OF, OD
    and OV keep it (PS3.5 7.3) and are swapped here word by word, Pixel Data included (PS3.5 A.3:
    8-bit pixels in OW are packed in big endian words too). UN values have no known word size.
    """
    datasets: dict[int, Dataset] = {id(ds): ds}
    unknown: list[DataElement] = []

    def swap(dataset: Dataset, element: DataElement) -> None:
        datasets[id(dataset)] = dataset
        if element.VR == "UN" and element.value:
            unknown.append(element)
        size = _WORD_SIZE.get(element.VR)
        if size and element.tag == _PIXEL_DATA and dataset is ds:
            size = max(2, ds.get("BitsAllocated", 16) // 8)  # 32-bit pixels: 32-bit words
        if size and element.value:
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()

    try:
        ds.walk(swap)  # parses every element, sequence items included, while still big endian
    except _CODEC_ERRORS as exc:
        raise TranscodeError("big endian data set cannot be converted") from exc
    if unknown:
        raise TranscodeError(f"big endian {unknown[0].tag} has VR UN")
    for dataset in datasets.values():
        dataset.set_original_encoding(False, True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _refusal(target: UID) -> str:
    """Why pacsd will not write an instance in `target`."""
    if target == ExplicitVRBigEndian:
        return "pydicom cannot convert to big endian"
    if target in LOSSLESS:
        return f"no encoder for {_label(target)}"
    if target in (*OTHER, *VIDEO):
        return f"will not encode lossy {_label(target)}"  # PS3.3 C.7.6.1.1.5
    return f"unknown transfer syntax {target}"


def _label(uid: str) -> str:
    """A short name for a transfer syntax in an error comment."""
    return UID(uid).keyword or str(uid)


@cache
def _decoder_available(transfer_syntax: str) -> bool:
    try:
        return get_decoder(transfer_syntax).is_available
    except NotImplementedError:  # pydicom has no decoder at all for this syntax
        return False


@cache
def _encoder_available(transfer_syntax: str) -> bool:
    try:
        return get_encoder(transfer_syntax).is_available
    except NotImplementedError:  # pydicom has no encoder at all for this syntax
        return False
