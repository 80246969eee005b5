"""Where an instance's bulk data and frames lie in its stored file, found without reading them.

WADO-RS sends frames and bulk data straight from the stored file (PS3.18 8.7.3.5, 10.4.1.1.3):
the header is parsed up to the pixel data with large values deferred (pydicom keeps their
offsets), then the pixel data element's header is read by hand, and for encapsulated pixel
data (PS3.5 A.4) the item headers only: each frame becomes a list of byte ranges of the file.
A 1 GB instance costs a few reads of headers here; its values are read later, in chunks.

Stored files in Deflated or Big Endian syntaxes are first converted to Explicit VR Little
Endian in memory (their bytes are not the values PS3.18 sends). Blocking: executor only.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from pacsd.dicom.header import BULK_DATA_THRESHOLD
from pacsd.dicom.part10 import read_layout
from pacsd.dicom.transcode import transcoded_dataset

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
DEFER_SIZE = 64 * 1024  # as dicom/header.py: longer values stay in the file
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
ITEM, SEQUENCE_END = 0xE000FFFE, 0xE0DDFFFE  # (FFFE,E000), (FFFE,E0DD) read as "<L" of "<HH"
Range = tuple[int, int]  # (offset, length) in the source


@dataclass
class Bulk:
    """One top-level bulk data element: its VR and where its value lies."""

    vr: str
    offset: int
    length: int


@dataclass
class Layout:
    """An instance's header and where its bulk values and frames lie in `source`.

    `source` is the stored file's path, or the bytes of its Explicit VR Little Endian form;
    None when it was read from an object store's reader (the object itself holds the values).
    """

    source: Path | bytes | None
    transfer_syntax: str
    header: Dataset
    bulk: dict[int, Bulk] = field(default_factory=dict)
    pixel_tag: int | None = None
    pixel: Bulk | None = None  # native pixel data
    fragments: list[Range] | None = None  # encapsulated pixel data
    offsets: list[int] = field(default_factory=list)  # the Basic Offset Table

    @property
    def encapsulated(self) -> bool:
        """Whether the pixel data is encapsulated (compressed frames)."""
        return self.fragments is not None

    @property
    def frame_count(self) -> int:
        """Number of Frames (1 when absent), 0 without pixel data."""
        if self.pixel_tag is None:
            return 0
        return max(1, int(self.header.get("NumberOfFrames") or 1))


def _after(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def needs_conversion(transfer_syntax: str) -> bool:
    """Whether a stored file's bytes are not the values PS3.18 sends (Deflated, Big Endian)."""
    return transfer_syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)


def read_instance_layout(path: Path, transfer_syntax: str) -> Layout:
    """The Layout of the stored file at `path` (FileNotFoundError when it is missing)."""
    if needs_conversion(transfer_syntax):
        buffer = io.BytesIO()
        dataset = transcoded_dataset(path, "1.2.840.10008.1.2.1")
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        return _layout(io.BytesIO(data), data, "1.2.840.10008.1.2.1")
    with path.open("rb") as fp:
        return _layout(fp, path, transfer_syntax)


def read_stream_layout(fp: BinaryIO, transfer_syntax: str) -> Layout:
    """The Layout of a stored file open as `fp` (an object store's reader), in a syntax that
    needs no conversion: only the header and the item headers are read from it."""
    if needs_conversion(transfer_syntax):
        raise ValueError(f"{transfer_syntax} is converted from a local file first")
    return _layout(fp, None, transfer_syntax)


def _layout(fp: BinaryIO, source: Path | bytes | None, transfer_syntax: str) -> Layout:
    part10 = read_layout(fp)
    syntax = UID(part10.transfer_syntax_uid)
    fp.seek(part10.dataset_offset)
    header = read_dataset(
        fp,
        is_implicit_VR=syntax.is_implicit_VR,
        is_little_endian=True,
        bytelength=part10.file_size - part10.dataset_offset,
        stop_when=_after,
        defer_size=DEFER_SIZE,
    )
    layout = Layout(source, str(syntax), header)
    for tag in header.keys():  # noqa: SIM118 (a Dataset is not a dict)
        raw: Any = header.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and _is_bulk(raw):
            layout.bulk[int(tag)] = Bulk(str(raw.VR or "UN"), int(raw.value_tell), raw.length)
    if fp.tell() < part10.file_size:
        _pixel_element(fp, layout, syntax.is_implicit_VR)
    return layout


def _is_bulk(raw: RawDataElement) -> bool:
    if raw.value is None and raw.length:
        return True  # deferred: longer than DEFER_SIZE
    return str(raw.VR) in BINARY_VRS and raw.length > BULK_DATA_THRESHOLD


def _pixel_element(fp: BinaryIO, layout: Layout, implicit: bool) -> None:
    """Read the pixel data element's header (and its items when encapsulated)."""
    group, element = struct.unpack("<HH", fp.read(4))
    tag = (group << 16) | element
    if implicit:
        vr, (length,) = "OW", struct.unpack("<L", fp.read(4))
    else:
        vr = fp.read(2).decode("ascii", "replace")
        (length,) = struct.unpack("<2xL", fp.read(6))
    layout.pixel_tag = tag
    offset = fp.tell()
    if length != 0xFFFFFFFF:
        layout.pixel = Bulk(vr, offset, length)
        return
    layout.fragments = []
    first = True
    while True:
        head = fp.read(8)
        if len(head) < 8:
            break
        item, item_length = struct.unpack("<LL", head)
        if item == SEQUENCE_END or item != ITEM:
            break
        if first:  # PS3.5 A.4: the first item is the Basic Offset Table
            table = fp.read(item_length)
            layout.offsets = list(struct.unpack(f"<{item_length // 4}L", table))
            first = False
            continue
        layout.fragments.append((fp.tell(), item_length))
        fp.seek(item_length, io.SEEK_CUR)


def native_frame_size(header: Dataset) -> int | None:
    """Bytes of one native frame (PS3.5 8.1.1), None when frames are not byte-aligned."""
    pixels = int(header.get("Rows") or 0) * int(header.get("Columns") or 0)
    samples = int(header.get("SamplesPerPixel") or 1)
    if header.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2
    bits = pixels * samples * int(header.get("BitsAllocated") or 0)
    return bits // 8 if bits and bits % 8 == 0 else None


def native_frame_ranges(layout: Layout, frames: Sequence[int]) -> list[list[Range]] | None:
    """The byte range of each frame of native pixel data; None when they are not
    byte-aligned or the pixel data is shorter than its frames."""
    size = native_frame_size(layout.header)
    pixel = layout.pixel
    if size is None or pixel is None or size * layout.frame_count > pixel.length:
        return None
    return [[(pixel.offset + (number - 1) * size, size)] for number in frames]


def encapsulated_frame_ranges(layout: Layout, frames: Sequence[int]) -> list[list[Range]] | None:
    """The fragments of each frame of encapsulated pixel data (by the Basic Offset Table,
    one fragment per frame, or all fragments of a single frame); None when the fragments
    cannot be told apart per frame without reading them."""
    fragments = layout.fragments or []
    count = layout.frame_count
    if len(layout.offsets) == count and fragments:
        base = fragments[0][0] - 8  # offsets count from the first fragment's item tag
        starts = [base + offset for offset in layout.offsets]
        grouped: list[list[Range]] = [[] for _ in range(count)]
        frame = -1
        for fragment in fragments:
            while frame + 1 < count and fragment[0] - 8 >= starts[frame + 1]:
                frame += 1
            if frame < 0:
                return None
            grouped[frame].append(fragment)
        return [grouped[number - 1] for number in frames]
    if len(fragments) == count:
        return [[fragments[number - 1]] for number in frames]
    if count == 1:
        return [list(fragments) for _number in frames]
    return None
