"""Frame Level Retrieve (PS3.4 Y.3.2, Y.3.3) and Retrieve Without Bulk Data (PS3.4 Z.1.3).

Functions on pydicom data sets, for services/retrieve.py: the frame range key of a FRAME level
identifier and its Frame List, the frames of native or encapsulated pixel data, the new
composite instance made of them, and the removal of bulk data; all pure but `read_stored`,
which reads the stored file they start from. Errors carry the statuses of PS3.4 Tables Y.4-1
and Y.4-2 (0xAA00-0xAA04), which end the whole C-GET or C-MOVE.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import (
    encapsulate,
    generate_fragmented_frames,
    generate_fragments,
    parse_basic_offsets,
)
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM, DSfloat

from pacsd import __version__
from pacsd.dicom.transcode import WRITABLE_UNCOMPRESSED, TranscodeError, transcoded_dataset
from pacsd.errors import DicomStatusError

SIMPLE_FRAME_LIST = int(Tag("SimpleFrameList"))  # (0008,1161) UL 1-n
CALCULATED_FRAME_LIST = int(Tag("CalculatedFrameList"))  # (0008,1162) UL 3-3n
TIME_RANGE = int(Tag("TimeRange"))  # (0008,1163) FD 2
FRAME_KEYS = {
    SIMPLE_FRAME_LIST: "SimpleFrameList",
    CALCULATED_FRAME_LIST: "CalculatedFrameList",
    TIME_RANGE: "TimeRange",
}
END_OF_FRAMES = 0xFFFFFFFF  # Y.3.2.1.2: "the end of the set of frames"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TIME_TOLERANCE_S = 1e-6
# Frames a NM image holds are the product of its vectors' dimensions (PS3.3 C.8.4.8); a subset
# is no valid NM image. VL Whole Slide Microscopy with TILED_FULL places tiles by frame number.
_NOT_EXTRACTABLE = {
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine images",
    "1.2.840.10008.5.1.4.1.1.5": "Nuclear Medicine images",
}
# Codestreams that end with an EOI/EOC marker (ISO 10918, 14495, 15444): frames can be found
# among fragments without an offset table.
_MARKER_ENDED = frozenset(
    "1.2.840.10008.1.2.4." + suffix
    for suffix in ("50", "51", "57", "70", "80", "81", "90", "91", "92", "93", "201", "202", "203")
)
# Per-frame vectors of the Multi-frame, Cine and SC Multi-frame modules (PS3.3 C.7.6.6,
# C.7.6.5, C.8.6.3): one value per frame.
_FRAME_VECTORS = (
    "FrameLabelVector",
    "PageNumberVector",
    "FramePrimaryAngleVector",
    "FrameSecondaryAngleVector",
    "SliceLocationVector",
    "DisplayWindowLabelVector",
)
_CONCATENATION = (
    "ConcatenationUID",
    "SOPInstanceUIDOfConcatenationSource",
    "InConcatenationNumber",
    "InConcatenationTotalNumber",
    "ConcatenationFrameOffsetNumber",
)
# What describes the source's pixel data only: the Pixel Data Provider URL (Y.3.3), offsets of
# its fragments (PS3.3 C.7.6.3.1.8), and trims numbered in its frames (PS3.3 C.7.6.5).
_SOURCE_ONLY = (
    "PixelDataProviderURL",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "StartTrim",
    "StopTrim",
)
_FRAME_TIME, _FRAME_TIME_VECTOR = int(Tag("FrameTime")), int(Tag("FrameTimeVector"))
_PER_FRAME_GROUPS = int(Tag("PerFrameFunctionalGroupsSequence"))


class NoFramesFound(DicomStatusError):
    """PS3.4 Y.4: Failed: None of the frames requested were found in the SOP Instance."""

    status = 0xAA00


class CannotCreateInstance(DicomStatusError):
    """PS3.4 Y.4: Failed: Unable to create new object for this SOP Class."""

    status = 0xAA01


class CannotExtractFrames(DicomStatusError):
    """PS3.4 Y.4: Failed: Unable to extract frames."""

    status = 0xAA02


class NotTimeBased(DicomStatusError):
    """PS3.4 Y.4: Failed: Time-based request received for a non-time-based original SOP Instance."""

    status = 0xAA03


class InvalidFrameRequest(DicomStatusError):
    """PS3.4 Y.4: Failed: Invalid Request."""

    status = 0xAA04


@dataclass(frozen=True)
class FrameRequest:
    """The one frame range key of a FRAME level identifier (PS3.4 Table Y.6-2), as given."""

    keyword: str
    values: tuple[float, ...]

    def frame_numbers(self, source: Dataset) -> list[int]:
        """The Frame List (PS3.4 Y.3.2.1) of `source`: frame numbers from 1, increasing."""
        count = frame_count(source)
        if self.keyword == "SimpleFrameList":
            # Frame numbers beyond the last frame name no frame of the instance.
            frames = [int(n) for n in self.values if n <= count]
        elif self.keyword == "CalculatedFrameList":
            frames = list(_calculated_frames([int(n) for n in self.values], count))
        else:
            start, end = self.values
            times = frame_times(source, count)
            frames = [
                number
                for number, time in enumerate(times, start=1)
                if start - _TIME_TOLERANCE_S <= time <= end + _TIME_TOLERANCE_S
            ]
        if not frames:
            raise NoFramesFound(f"none of the requested frames is among the {count} frames")
        return frames


def frame_request(identifier: Dataset) -> FrameRequest:
    """The frame range key of a FRAME level identifier, checked (PS3.4 Y.6.1.1.3, Y.3.2.1)."""
    present = [tag for tag in FRAME_KEYS if tag in identifier]
    if len(present) != 1:
        raise InvalidFrameRequest("FRAME level takes exactly one of the three frame range keys")
    keyword = FRAME_KEYS[present[0]]
    values = _numbers(identifier[present[0]], keyword)
    if keyword == "SimpleFrameList":
        _check_simple(values)
    elif keyword == "CalculatedFrameList":
        _check_calculated(values)
    else:
        _check_time_range(values)
    return FrameRequest(keyword, tuple(values))


def has_frame_keys(identifier: Dataset) -> bool:
    """Whether an identifier gives a frame range key a value (only FRAME level takes one)."""
    return any(tag in identifier and not identifier[tag].is_empty for tag in FRAME_KEYS)


def _numbers(element: DataElement, keyword: str) -> list[float]:
    value = element.value
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if element.is_empty or not all(
        isinstance(item, int | float) and math.isfinite(item) for item in items
    ):
        raise InvalidFrameRequest(f"{keyword} has no numeric value")
    return [float(item) if keyword == "TimeRange" else int(item) for item in items]


def _check_simple(values: Sequence[float]) -> None:
    """Y.3.2.1.1: frame numbers from 1, no duplicates, increasing."""
    if values[0] < 1 or any(b <= a for a, b in pairwise(values)):
        raise InvalidFrameRequest("Simple Frame List must increase from frame 1 on")


def _check_calculated(values: Sequence[float]) -> None:
    """Y.3.2.1.2: 3-tuples (first, upper limit >= first, increment > 0), sub-ranges that do not
    overlap and increase; FFFFFFFFH as the upper limit only in the last 3-tuple."""
    if len(values) % 3:
        raise InvalidFrameRequest("Calculated Frame List is not a list of 3-tuples")
    last = 0
    for index in range(0, len(values), 3):
        first, upper, step = (int(v) for v in values[index : index + 3])
        if first < 1 or upper < first or step < 1:
            raise InvalidFrameRequest(f"Calculated Frame List 3-tuple {index // 3 + 1} is invalid")
        if first <= last:
            raise InvalidFrameRequest("Calculated Frame List sub-ranges overlap")
        if upper == END_OF_FRAMES and index + 3 < len(values):
            raise InvalidFrameRequest("Calculated Frame List: FFFFFFFFH before the last 3-tuple")
        last = first + (upper - first) // step * step


def _check_time_range(values: Sequence[float]) -> None:
    if len(values) != 2 or values[1] < values[0]:
        raise InvalidFrameRequest("Time Range needs a start and an end time, in order")


def _calculated_frames(values: Sequence[int], count: int) -> Iterator[int]:
    """Y.3.2.1.2 applied to an instance of `count` frames."""
    tuples = [values[index : index + 3] for index in range(0, len(values), 3)]
    for position, (first, upper, step) in enumerate(tuples, start=1):
        if first > count:
            continue  # "that sub-range shall be ignored"
        if upper > count and position < len(tuples):
            # Beyond the last frame, the upper limit denotes the end: in the last 3-tuple only.
            raise InvalidFrameRequest("Calculated Frame List: past the end before the last 3-tuple")
        yield from range(first, min(upper, count) + 1, step)


# --- The source instance -----------------------------------------------------------------------


def pixel_keyword(ds: Dataset) -> str | None:
    """The top-level pixel data element of `ds` (PS3.3 C.7.6.3), if any."""
    return next((keyword for keyword in PIXEL_KEYWORDS if keyword in ds), None)


def frame_count(source: Dataset) -> int:
    """Number of Frames of a multi-frame image that frames can be extracted from.

    CannotCreateInstance (0xAA01) when the new instance could not be a valid one of its SOP
    Class (Y.3.3): no Multi-frame module, a class whose frames depend on each other, audio that
    would lose its relation to the frames (Y.3.2.1.3); CannotExtractFrames (0xAA02) when the
    pixel data is not in the instance.
    """
    refused = _NOT_EXTRACTABLE.get(str(source.get("SOPClassUID", "")))
    if refused:
        raise CannotCreateInstance(f"frames of {refused} are not extracted")
    if source.get("DimensionOrganizationType") == "TILED_FULL":
        raise CannotCreateInstance("frames of a TILED_FULL image are not extracted")
    if any(0x5000 <= tag.group <= 0x501E and tag.element == 0x200C for tag in list(source.keys())):
        raise CannotCreateInstance("the instance holds audio: frames are not extracted")
    try:
        count = int(source.get("NumberOfFrames") or 0)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise CannotCreateInstance("not a multi-frame image (no Number of Frames)")
    if pixel_keyword(source) is None:
        if "PixelDataProviderURL" in source:
            raise CannotExtractFrames("pixel data is referenced, not held")
        raise CannotCreateInstance("the instance has no pixel data")
    return count


def frame_times(source: Dataset, count: int) -> list[float]:
    """Each frame's time in seconds after Content Time (PS3.4 Y.3.2.1.3).

    From Frame Time or Frame Time Vector (with Frame Delay, PS3.3 C.7.6.5), else from Frame
    Reference DateTime in each frame's Frame Content Sequence; NotTimeBased (0xAA03) else.
    """
    cine = cine_times(source, count)
    if cine is not None:
        delay = _number(source.get("FrameDelay")) or 0.0
        return [(delay + time) / 1000 for time in cine]
    references = _frame_reference_datetimes(source, count)
    content = _content_datetime(source)
    if references is None or content is None:
        raise NotTimeBased("no Frame Time, Frame Time Vector or Frame Reference DateTime")
    return [(reference - content).total_seconds() for reference in references]


def cine_times(source: Dataset, count: int) -> list[float] | None:
    """Milliseconds from the first frame to each frame, by Frame Time Vector or Frame Time."""
    increments = _values(source.get(_FRAME_TIME_VECTOR))
    if len(increments) == count:
        # PS3.3 C.7.6.5.1.2: increments between frames; the first frame's is 0.
        return list(accumulate((float(v) for v in increments[1:]), initial=0.0))
    frame_time = _number(source.get(_FRAME_TIME))
    if frame_time is None:
        return None
    return [index * frame_time for index in range(count)]


def _frame_reference_datetimes(source: Dataset, count: int) -> list[datetime] | None:
    items = source.get("PerFrameFunctionalGroupsSequence") or []
    if len(items) != count:
        return None
    found: list[datetime] = []
    for item in items:
        content = item.get("FrameContentSequence") or []
        value = content[0].get("FrameReferenceDateTime") if content else None
        try:
            found.append(_naive(DT(value)))
        except (TypeError, ValueError):  # absent or not a date-time: no time for this frame
            return None
    return found


def _content_datetime(source: Dataset) -> datetime | None:
    if not source.get("ContentDate") or not source.get("ContentTime"):
        return None
    try:
        return datetime.combine(DA(source.ContentDate), TM(source.ContentTime))
    except (TypeError, ValueError):
        return None


def _naive(value: datetime) -> datetime:
    """A datetime without its UTC offset: Content Date and Time carry none (PS3.3 C.12.1)."""
    return value.replace(tzinfo=None)


# --- Frames of the pixel data ------------------------------------------------------------------


def native_frames(source: Dataset, frames: Sequence[int], count: int) -> bytes:
    """The selected frames of native (uncompressed) pixel data, in order (PS3.5 8.1.1)."""
    keyword = pixel_keyword(source)
    assert keyword is not None
    data = source[keyword].value
    bits = _frame_bits(source, keyword)
    if bits % 8 == 0:
        size = bits // 8
        if len(data) < size * count:
            raise CannotExtractFrames("pixel data is shorter than its frames")
        selected = b"".join(data[(n - 1) * size : n * size] for n in frames)
    else:  # 1 bit per pixel, frames not byte-aligned (PS3.5 8.1.1): bit by bit
        unpacked = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        if len(unpacked) < bits * count:
            raise CannotExtractFrames("pixel data is shorter than its frames")
        chosen = np.concatenate([unpacked[(n - 1) * bits : n * bits] for n in frames])
        selected = np.packbits(chosen, bitorder="little").tobytes()
    return selected + b"\x00" * (len(selected) % 2)


def _frame_bits(ds: Dataset, keyword: str) -> int:
    pixels = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
    if keyword != "PixelData":
        return pixels * (32 if keyword == "FloatPixelData" else 64)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # two chroma samples per pair of pixels (PS3.3 C.7.6.3.1.2)
    bits = pixels * samples * int(ds.get("BitsAllocated") or 0)
    if bits <= 0:
        raise CannotExtractFrames("the Image Pixel module is incomplete")
    return bits


def encapsulated_frames(
    source: Dataset, frames: Sequence[int], count: int, transfer_syntax: str
) -> list[bytes] | None:
    """The selected frames of encapsulated pixel data, still compressed (PS3.5 A.4), or None
    when the fragments cannot be told apart per frame (the caller then decodes)."""
    data = source.PixelData
    extended = source.get("ExtendedOffsetTable")
    lengths = source.get("ExtendedOffsetTableLengths")
    try:
        if extended is not None and lengths is not None:
            split = generate_fragmented_frames(data, extended_offsets=(extended, lengths))
            return _pick((b"".join(f) for f in split), frames, count)
        buffer = BytesIO(data)
        if parse_basic_offsets(buffer):
            split = generate_fragmented_frames(data)
            return _pick((b"".join(f) for f in split), frames, count)
        fragments = list(generate_fragments(buffer))  # the items after the (empty) table
    except (ValueError, EOFError, IndexError) as exc:
        raise CannotExtractFrames("encapsulated pixel data cannot be parsed") from exc
    if len(fragments) == count:
        return _pick(fragments, frames, count)
    if count == 1:
        return [b"".join(fragments)]
    if transfer_syntax in _MARKER_ENDED:
        return _pick(_marker_ended(fragments), frames, count)
    return None


def _marker_ended(fragments: list[bytes]) -> Iterator[bytes]:
    """Frames of fragments, each frame ending with an EOI/EOC marker (FFD9, maybe padded)."""
    frame: list[bytes] = []
    for fragment in fragments:
        frame.append(fragment)
        if fragment.endswith(b"\xff\xd9") or fragment.endswith(b"\xff\xd9\x00"):
            yield b"".join(frame)
            frame = []
    if frame:
        yield b"".join(frame)


def _pick(all_frames: Iterable[bytes], frames: Sequence[int], count: int) -> list[bytes] | None:
    """The wanted frames, when there are exactly `count` in all (else the split is wrong)."""
    wanted = set(frames)
    chosen: dict[int, bytes] = {}
    total = 0
    for total, frame in enumerate(all_frames, start=1):
        if total in wanted:
            chosen[total] = frame
    return [chosen[n] for n in frames] if total == count else None


def encapsulated_pixel_data(frames: list[bytes]) -> bytes:
    """Frames as encapsulated Pixel Data: one fragment each, with a Basic Offset Table when the
    offsets fit in 32 bits (PS3.5 A.4)."""
    return encapsulate(frames, has_bot=sum(len(frame) + 8 for frame in frames) < 2**32)


# --- The new instance (PS3.4 Y.3.3) ------------------------------------------------------------


@dataclass(frozen=True)
class Extraction:
    """What makes the new instance: the request, the frames kept, and who makes it when."""

    request: FrameRequest
    frames: tuple[int, ...]
    count: int  # frames in the source
    sop_instance_uid: str
    created: datetime


def make_new_instance(ds: Dataset, extraction: Extraction, pixel_value: bytes) -> Dataset:
    """Turn the source data set `ds` (in place) into the new instance (PS3.4 Y.3.3).

    Same SOP Class, patient, study and series; a new SOP Instance UID; the Image Pixel module
    with the kept frames only; the frame-related attributes reduced to them; no private
    attributes, no Concatenation; the Frame Extraction module (PS3.3 C.12.3) and the Contributing
    Equipment Sequence each get an item appended.
    """
    frames, count = extraction.frames, extraction.count
    keyword = pixel_keyword(ds)
    assert keyword is not None
    source_uid = str(ds.SOPInstanceUID)
    cine = cine_times(ds, count)
    ds.remove_private_tags()  # Y.3.3 note: not copied unless their significance is known
    for removed in (*_CONCATENATION, *_SOURCE_ONLY):
        if removed in ds:
            delattr(ds, removed)
    ds[keyword].value = pixel_value
    ds.NumberOfFrames = len(frames)
    _reduce_vectors(ds, frames, count)
    if cine is not None:
        _retime(ds, [cine[n - 1] for n in frames])
    _reduce_functional_groups(ds, frames, count)
    _renumber_references(ds, {old: new for new, old in enumerate(frames, start=1)})
    _append(ds, "FrameExtractionSequence", _extraction_item(source_uid, extraction.request))
    _append(ds, "ContributingEquipmentSequence", _equipment_item(extraction.created))
    ds.SOPInstanceUID = extraction.sop_instance_uid
    ds.InstanceCreationDate = extraction.created.strftime("%Y%m%d")
    ds.InstanceCreationTime = extraction.created.strftime("%H%M%S")
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = UID(extraction.sop_instance_uid)
    return ds


def _reduce_vectors(ds: Dataset, frames: Sequence[int], count: int) -> None:
    """Per-frame vectors, and what Frame Increment Pointer points to, keep the kept frames."""
    pointed = [int(tag) for tag in _values(ds.get("FrameIncrementPointer"))]
    tags = {int(Tag(keyword)) for keyword in _FRAME_VECTORS} | set(pointed)
    for tag in tags - {_FRAME_TIME, _FRAME_TIME_VECTOR, _PER_FRAME_GROUPS}:
        element = ds.get(tag)
        values = _values(element)
        if element is not None and len(values) == count:
            kept = [values[n - 1] for n in frames]
            element.value = kept if len(kept) > 1 else kept[0]


def _retime(ds: Dataset, kept: list[float]) -> None:
    """Frame Time or Frame Time Vector for the kept frames, and Frame Delay for the first one
    (PS3.3 C.7.6.5.1), so each frame keeps its time after Content Time."""
    if kept[0]:
        delay = (_number(ds.get("FrameDelay")) or 0.0) + kept[0]
        ds.FrameDelay = _ds(delay)
    steps = [b - a for a, b in pairwise(kept)]
    vector = [_ds(value) for value in (0.0, *steps)]
    if _FRAME_TIME_VECTOR in ds:
        ds.FrameTimeVector = vector if len(vector) > 1 else vector[0]
    elif steps and all(abs(step - steps[0]) < 1e-6 for step in steps):
        ds.FrameTime = _ds(steps[0])
    elif steps:  # uneven: a Frame Time Vector instead, and the pointer follows it
        del ds[_FRAME_TIME]
        ds.FrameTimeVector = vector
        pointer = [int(tag) for tag in _values(ds.get("FrameIncrementPointer"))]
        if _FRAME_TIME in pointer:
            ds.FrameIncrementPointer = [
                _FRAME_TIME_VECTOR if tag == _FRAME_TIME else tag for tag in pointer
            ]


def _ds(milliseconds: float) -> DSfloat:
    """A DS value of milliseconds, to the nanosecond (sums of DS values carry float noise)."""
    return DSfloat(round(milliseconds, 6), auto_format=True)


def _reduce_functional_groups(ds: Dataset, frames: Sequence[int], count: int) -> None:
    items = ds.get("PerFrameFunctionalGroupsSequence")
    if items is None:
        return
    if len(items) != count:
        raise CannotCreateInstance("per-frame functional groups do not match Number of Frames")
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([items[n - 1] for n in frames])


def _renumber_references(ds: Dataset, new_number: dict[int, int]) -> None:
    """References to the instance's own frames (PS3.3 C.7.6.9, C.7.6.10, C.9.2) follow the
    new numbering; those to frames left out are removed."""
    if "RepresentativeFrameNumber" in ds:
        kept = new_number.get(int(ds.RepresentativeFrameNumber))
        if kept:
            ds.RepresentativeFrameNumber = kept
        else:
            del ds.RepresentativeFrameNumber
    _renumber_frames_of_interest(ds, new_number)
    _renumber_masks(ds, new_number)
    _renumber_overlays(ds, new_number)


def _renumber_frames_of_interest(ds: Dataset, new_number: dict[int, int]) -> None:
    """Frame Numbers of Interest and their aligned Description and Type (PS3.3 C.7.6.9)."""
    numbers = [int(n) for n in _values(ds.get("FrameNumbersOfInterest"))]
    kept = [index for index, number in enumerate(numbers) if number in new_number]
    for keyword in ("FrameNumbersOfInterest", "FrameOfInterestDescription", "FrameOfInterestType"):
        if keyword not in ds:
            continue
        values = _values(ds.get(keyword))
        if keyword == "FrameNumbersOfInterest":
            chosen = [new_number[numbers[index]] for index in kept]
        else:
            chosen = [values[index] for index in kept if index < len(values)]
        if chosen:
            ds[keyword].value = chosen if len(chosen) > 1 else chosen[0]
        else:
            delattr(ds, keyword)


def _renumber_masks(ds: Dataset, new_number: dict[int, int]) -> None:
    """Mask Subtraction Sequence (PS3.3 C.7.6.10): an item whose mask frames were all kept stays
    with its frames renumbered; the others go, and with them a subtracted viewing mode."""
    items = ds.get("MaskSubtractionSequence")
    if items is None:
        return
    kept = []
    for item in items:
        masks = [int(n) for n in _values(item.get("MaskFrameNumbers"))]
        if any(n not in new_number for n in masks):
            continue
        if masks:
            item.MaskFrameNumbers = [new_number[n] for n in masks]
        ranges = [int(n) for n in _values(item.get("ApplicableFrameRange"))]
        if ranges:
            renumbered = _renumbered_ranges(ranges, new_number)
            if not renumbered:
                continue
            item.ApplicableFrameRange = renumbered
        kept.append(item)
    if kept:
        ds.MaskSubtractionSequence = DicomSequence(kept)
        return
    del ds.MaskSubtractionSequence
    if ds.get("RecommendedViewingMode") == "SUB":
        del ds.RecommendedViewingMode


def _renumbered_ranges(ranges: list[int], new_number: dict[int, int]) -> list[int]:
    renumbered: list[int] = []
    for first, last in zip(ranges[::2], ranges[1::2], strict=False):
        inside = [new for old, new in new_number.items() if first <= old <= last]
        if inside:
            renumbered += [min(inside), max(inside)]
    return renumbered


def _renumber_overlays(ds: Dataset, new_number: dict[int, int]) -> None:
    """An overlay of a multi-frame image covers Number of Frames in Overlay frames from Image
    Frame Origin (PS3.3 C.9.2.1.2); it stays when those frames are kept together, else it goes."""
    for group in range(0x6000, 0x6020, 2):
        if (group << 16 | 0x3000) not in ds:
            continue
        origin = int(_number(ds.get(group << 16 | 0x0051)) or 1)
        length = int(_number(ds.get(group << 16 | 0x0015)) or 1)
        covered = [new_number.get(number, 0) for number in range(origin, origin + length)]
        if covered[0] and covered == list(range(covered[0], covered[0] + length)):
            if covered[0] != origin:
                ds.add_new(group << 16 | 0x0051, "US", covered[0])
            continue
        for tag in [tag for tag in list(ds.keys()) if tag.group == group]:
            del ds[tag]


def _extraction_item(source_uid: str, request: FrameRequest) -> Dataset:
    """PS3.3 C.12.3: the source and the frame range key of the request (Y.3.3)."""
    item = Dataset()
    item.MultiFrameSourceSOPInstanceUID = source_uid
    values: list[Any] = [
        float(v) if request.keyword == "TimeRange" else int(v) for v in request.values
    ]
    setattr(item, request.keyword, values if len(values) > 1 else values[0])
    return item


def _equipment_item(created: datetime) -> Dataset:
    """PS3.4 Y.3.3: the equipment that extracted the frames, (109105, DCM, "Frame Extracting
    Equipment"), in the Contributing Equipment Sequence (PS3.3 C.12.1)."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "109105", "DCM"
    purpose.CodeMeaning = "Frame Extracting Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = "pacsd"
    item.ManufacturerModelName = "pacsd"
    item.SoftwareVersions = __version__[:64]
    item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = "Frame Level Retrieve (PS3.4 Y.3.3)"
    return item


def _append(ds: Dataset, keyword: str, item: Dataset) -> None:
    items = list(ds.get(keyword) or [])
    setattr(ds, keyword, DicomSequence([*items, item]))


def _values(value: Any) -> list[Any]:
    """The values of an element, or of an element's value, as a list ([]: absent or empty)."""
    if isinstance(value, DataElement):
        value = value.value
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _number(value: Any) -> float | None:
    values = _values(value)
    try:
        return float(values[0]) if values else None
    except (TypeError, ValueError):
        return None


# --- Retrieve Without Bulk Data (PS3.4 Z.1.3) --------------------------------------------------

_BULK_DATA = {
    int(Tag(keyword)): keyword
    for keyword in (
        *PIXEL_KEYWORDS,
        "PixelDataProviderURL",
        "SpectroscopyData",
        "EncapsulatedDocument",
    )
}
_REPEATING_BULK_DATA = {  # (60xx,3000), (50xx,3000), (50xx,200C)
    (0x6000, 0x3000): "OverlayData",
    (0x5000, 0x3000): "CurveData",
    (0x5000, 0x200C): "AudioSampleData",
}


def without_bulk_data(ds: Dataset) -> list[str]:
    """Remove, in place, what PS3.4 Table Z.1-1 leaves out of the top level of the data set and
    Waveform Data from the Waveform Sequence items; the keywords of what was removed.

    Nothing else changes (Z.4.2.3.1): Icon Image Sequence items keep their pixel data, private
    attributes stay.
    """
    removed: list[str] = []
    for tag in list(ds.keys()):  # tags only: a deferred value is never read to be dropped
        name = _BULK_DATA.get(int(tag))
        repeating = 0x5000 <= tag.group <= 0x501E or 0x6000 <= tag.group <= 0x601E
        if name is None and repeating and tag.group % 2 == 0:
            name = _REPEATING_BULK_DATA.get((tag.group & 0xFF00, tag.element))
        if name is not None:
            del ds[tag]
            removed.append(name)
    for item in ds.get("WaveformSequence") or []:
        if "WaveformData" in item:
            del item.WaveformData
            removed.append("WaveformData")
    return removed


def bulk_free_syntax(ds: Dataset, accepted: Sequence[str]) -> str:
    """The transfer syntax to send `ds`, its bulk data removed, to a receiver that accepted
    `accepted`: its own when accepted, else one pacsd writes (TranscodeError: none).

    Without top-level pixel data an encapsulated syntax encodes the data set as Explicit VR
    Little Endian, and a native Icon Image may stay native in it (PS3.5 A.4); an encapsulated
    Icon Image stays only in its own syntax.
    """
    current = str(ds.file_meta.TransferSyntaxUID)
    if current in accepted:
        return current
    icons = ds.get("IconImageSequence") or []
    if any("PixelData" in icon and icon["PixelData"].is_undefined_length for icon in icons):
        raise TranscodeError("compressed icon image: its syntax is not accepted")
    for uid in (*WRITABLE_UNCOMPRESSED, *accepted):
        if uid in accepted and (uid in WRITABLE_UNCOMPRESSED or _is_encapsulated(uid)):
            return uid
    raise TranscodeError("receiver accepts no syntax pacsd writes")


def _is_encapsulated(uid: str) -> bool:
    try:
        return bool(UID(uid).is_encapsulated)
    except ValueError:  # not a transfer syntax pydicom knows
        return False


def read_stored(
    path: Path, transfer_syntax: str, prepare: Callable[[Dataset], object] | None = None
) -> Dataset:
    """A stored instance, parsed, as a data set pydicom can write in any little endian syntax
    (an Explicit VR Big Endian one is turned little endian: pydicom writes no big endian).

    Values longer than DEFER_SIZE are read only when used: `prepare` (bulk data removal) runs
    before anything is parsed, so what it deletes is never read into memory.
    TranscodeError when it cannot be read; FileNotFoundError when it is missing.
    """
    if transfer_syntax == ExplicitVRBigEndian:
        dataset = transcoded_dataset(path, ExplicitVRLittleEndian)
        if prepare is not None:
            prepare(dataset)
        return dataset
    try:
        dataset = dcmread(path, defer_size=DEFER_SIZE)
        if prepare is not None:
            prepare(dataset)
        for _element in dataset.iterall():  # parse now, not while encoding
            pass
    except FileNotFoundError:
        raise
    except _READ_ERRORS as exc:
        raise TranscodeError("stored file cannot be read") from exc
    return dataset


DEFER_SIZE = 256 * 1024
_READ_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, struct.error)
