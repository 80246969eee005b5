"""Frame Level Retrieve (PS3.4 Y.3.2, Y.3.3) and Retrieve Without Bulk Data (PS3.4 Z.1.3): the
frame range keys and their Frame Lists, the statuses of Table Y.4-1, the new instance's
attributes and pixels, and the bulk data left out. Pure functions on generated data sets."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import (
    encapsulate,
    encapsulate_extended,
    generate_fragments,
    parse_basic_offsets,
)
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pacsd.dicom import frames
from pacsd.dicom.frames import (
    CannotCreateInstance,
    CannotExtractFrames,
    Extraction,
    FrameRequest,
    InvalidFrameRequest,
    NoFramesFound,
    NotTimeBased,
    bulk_free_syntax,
    encapsulated_frames,
    encapsulated_pixel_data,
    frame_request,
    has_frame_keys,
    make_new_instance,
    native_frames,
    without_bulk_data,
)
from pacsd.dicom.qr_models import (
    COMPOSITE_INSTANCE_ROOT,
    WITHOUT_BULK_DATA,
    IdentifierError,
    Level,
    level_of,
    model_of,
    retrieve_keys,
)
from pacsd.dicom.transcode import TranscodeError
from pacsd.dimse.messages import encode_dataset
from tests import datagen
from tests.compressed import encode_instance, image_dataset

CIRR_GET, CIRR_MOVE = "1.2.840.10008.5.1.4.1.2.4.3", "1.2.840.10008.5.1.4.1.2.4.2"
WITHOUT_BULK_DATA_GET = "1.2.840.10008.5.1.4.1.2.5.3"
END = 0xFFFFFFFF
NEW_UID = "2.25.1234567890"
WHEN = datetime(2026, 3, 15, 10, 30, 45)


def keys(**values: object) -> Dataset:
    """An identifier holding `values` (keyword=value)."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def cine(frames_count: int = 8, **extra: object) -> Dataset:
    """A native multi-frame US cine (Frame Time 33.3 ms) with file meta, like dcmread gives."""
    ds = datagen.us_multiframe(datagen.StudyContext(), frames=frames_count)
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def extract(ds: Dataset, request: FrameRequest) -> tuple[Dataset, np.ndarray]:
    """The new instance made from native `ds`, and the source frames it should hold."""
    source = ds.pixel_array.copy()
    count = int(ds.NumberOfFrames)
    numbers = request.frame_numbers(ds)
    extraction = Extraction(request, tuple(numbers), count, NEW_UID, WHEN)
    new = make_new_instance(ds, extraction, native_frames(ds, numbers, count))
    return new, source[[n - 1 for n in numbers]]


# --- The information models --------------------------------------------------------------------


def test_composite_instance_root_has_image_and_frame_levels() -> None:
    for uid in (CIRR_GET, CIRR_MOVE):
        assert model_of(uid) is COMPOSITE_INSTANCE_ROOT
    assert level_of(keys(QueryRetrieveLevel="FRAME"), COMPOSITE_INSTANCE_ROOT) is Level.FRAME
    assert level_of(keys(QueryRetrieveLevel="IMAGE"), COMPOSITE_INSTANCE_ROOT) is Level.IMAGE
    with pytest.raises(IdentifierError):
        level_of(keys(QueryRetrieveLevel="STUDY"), COMPOSITE_INSTANCE_ROOT)


def test_without_bulk_data_has_the_image_level_only() -> None:
    assert model_of(WITHOUT_BULK_DATA_GET) is WITHOUT_BULK_DATA
    assert not WITHOUT_BULK_DATA.bulk_data
    with pytest.raises(IdentifierError):
        level_of(keys(QueryRetrieveLevel="FRAME"), WITHOUT_BULK_DATA)
    with pytest.raises(IdentifierError):
        level_of(keys(QueryRetrieveLevel="FRAME"), model_of("1.2.840.10008.5.1.4.1.2.2.3"))


def test_retrieve_keys_are_the_sop_instance_uids_alone() -> None:
    """Y.6.1.1.2: the SOP Instance UID is the only key; study and series keys are ignored."""
    identifier = keys(SOPInstanceUID=["1.2.3", "1.2.4"], StudyInstanceUID="9.9")
    assert retrieve_keys(identifier, COMPOSITE_INSTANCE_ROOT, Level.IMAGE) == {
        Level.IMAGE: ["1.2.3", "1.2.4"]
    }
    one = keys(SOPInstanceUID="1.2.3", SimpleFrameList=[1])
    assert retrieve_keys(one, COMPOSITE_INSTANCE_ROOT, Level.FRAME) == {Level.IMAGE: ["1.2.3"]}
    with pytest.raises(IdentifierError):
        retrieve_keys(keys(SimpleFrameList=[1]), COMPOSITE_INSTANCE_ROOT, Level.FRAME)


# --- Frame range keys (Y.3.2.1, Y.6.1.1.3) -----------------------------------------------------


@pytest.mark.parametrize(
    "identifier",
    [
        keys(),
        keys(SimpleFrameList=[1], TimeRange=[0.0, 1.0]),
        keys(SimpleFrameList=None),
        keys(SimpleFrameList=[0, 1]),
        keys(SimpleFrameList=[3, 2]),
        keys(SimpleFrameList=[2, 2]),
        keys(CalculatedFrameList=[1, 5]),
        keys(CalculatedFrameList=[0, 5, 1]),
        keys(CalculatedFrameList=[5, 4, 1]),
        keys(CalculatedFrameList=[1, 5, 0]),
        keys(CalculatedFrameList=[1, 10, 2, 9, 12, 1]),
        keys(CalculatedFrameList=[1, END, 1, 20, 30, 1]),
        keys(TimeRange=1.0),
        keys(TimeRange=[2.0, 1.0]),
    ],
    ids=[
        "no key", "two keys", "empty", "frame 0", "decreasing", "duplicate", "not 3-tuples",
        "first 0", "upper below first", "increment 0", "overlapping", "end not last",
        "one time", "times reversed",
    ],
)  # fmt: skip
def test_invalid_frame_keys_answer_aa04(identifier: Dataset) -> None:
    with pytest.raises(InvalidFrameRequest) as caught:
        frame_request(identifier)
    assert caught.value.status == 0xAA04


def test_valid_frame_keys_keep_the_values_given() -> None:
    assert frame_request(keys(SimpleFrameList=[1, 4, 9])) == FrameRequest(
        "SimpleFrameList", (1, 4, 9)
    )
    assert frame_request(keys(CalculatedFrameList=[1, 10, 2, 10, 12, 1])).values == (
        1, 10, 2, 10, 12, 1,
    )  # fmt: skip
    assert frame_request(keys(TimeRange=[0.5, 0.5])) == FrameRequest("TimeRange", (0.5, 0.5))


def test_frame_keys_only_count_with_a_value() -> None:
    assert has_frame_keys(keys(SimpleFrameList=[2]))
    assert not has_frame_keys(keys(SimpleFrameList=None, SOPInstanceUID="1.2"))


def test_calculated_frame_list_example_of_the_standard() -> None:
    """Y.3.2.1.2 note: 2, 9, 3, 12, FFFFFFFFH, 5 over 25 frames is 2, 5, 8, 12, 17, 22."""
    request = frame_request(keys(CalculatedFrameList=[2, 9, 3, 12, END, 5]))
    assert request.frame_numbers(cine(25)) == [2, 5, 8, 12, 17, 22]


def test_frames_beyond_the_last_one_are_left_out() -> None:
    assert frame_request(keys(SimpleFrameList=[2, 8, 9, 40])).frame_numbers(cine()) == [2, 8]
    # A sub-range starting after the last frame is ignored; an upper limit beyond it ends there.
    calculated = keys(CalculatedFrameList=[1, 3, 1, 7, 100, 1])
    assert frame_request(calculated).frame_numbers(cine()) == [1, 2, 3, 7, 8]
    ignored = keys(CalculatedFrameList=[1, 3, 1, 9, 12, 1])
    assert frame_request(ignored).frame_numbers(cine()) == [1, 2, 3]


def test_no_requested_frame_in_the_instance_answers_aa00() -> None:
    for identifier in (keys(SimpleFrameList=[9, 10]), keys(CalculatedFrameList=[9, END, 1])):
        with pytest.raises(NoFramesFound) as caught:
            frame_request(identifier).frame_numbers(cine())
        assert caught.value.status == 0xAA00
    with pytest.raises(NoFramesFound):
        frame_request(keys(TimeRange=[10.0, 20.0])).frame_numbers(cine())


def test_an_upper_limit_past_the_end_before_the_last_3_tuple_answers_aa04() -> None:
    request = frame_request(keys(CalculatedFrameList=[1, 20, 1, 30, 40, 1]))
    with pytest.raises(InvalidFrameRequest):
        request.frame_numbers(cine())


def test_time_range_by_frame_time_and_frame_delay() -> None:
    """Y.3.2.1.3: seconds after Content Time, the frames at either end included."""
    request = frame_request(keys(TimeRange=[0.0333, 0.0999]))
    assert request.frame_numbers(cine()) == [2, 3, 4]
    delayed = cine(FrameDelay=100)  # PS3.3 C.7.6.5: first frame 100 ms after Content Time
    assert frame_request(keys(TimeRange=[0.0, 0.15])).frame_numbers(delayed) == [1, 2]


def test_time_range_by_frame_time_vector() -> None:
    ds = cine(4)
    del ds.FrameTime
    ds.FrameTimeVector = [0, 10, 100, 10]  # frames at 0, 10, 110, 120 ms
    ds.FrameIncrementPointer = 0x00181065
    assert frame_request(keys(TimeRange=[0.005, 0.115])).frame_numbers(ds) == [2, 3]


def test_time_range_by_frame_reference_datetime() -> None:
    ds = cine(3)
    del ds.FrameTime
    ds.ContentDate, ds.ContentTime = "20260315", "101500"
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [frame_content(f"20260315101500.{tenths}00000") for tenths in (0, 5, 9)]
    )
    assert frame_request(keys(TimeRange=[0.4, 1.0])).frame_numbers(ds) == [2, 3]


def frame_content(reference: str, label: str = "") -> Dataset:
    """A per-frame functional groups item with its Frame Content Sequence."""
    content = Dataset()
    content.FrameReferenceDateTime = reference
    if label:
        content.FrameLabel = label
    item = Dataset()
    item.FrameContentSequence = Sequence([content])
    return item


def test_time_range_on_an_instance_without_frame_times_answers_aa03() -> None:
    ds = cine()
    del ds.FrameTime
    with pytest.raises(NotTimeBased) as caught:
        frame_request(keys(TimeRange=[0.0, 1.0])).frame_numbers(ds)
    assert caught.value.status == 0xAA03


@pytest.mark.parametrize(
    "source",
    [
        datagen.ct_image(datagen.StudyContext(), size=8),  # single frame: no Multi-frame module
        datagen.basic_text_sr(datagen.StudyContext()),
        cine(SOPClassUID="1.2.840.10008.5.1.4.1.1.20"),  # NM Image Storage
        cine(DimensionOrganizationType="TILED_FULL"),
    ],
    ids=["single-frame CT", "SR", "NM", "TILED_FULL"],
)
def test_an_instance_frames_cannot_be_taken_from_answers_aa01(source: Dataset) -> None:
    with pytest.raises(CannotCreateInstance) as caught:
        frame_request(keys(SimpleFrameList=[1])).frame_numbers(source)
    assert caught.value.status == 0xAA01


def test_audio_that_would_lose_its_frames_answers_aa01() -> None:
    ds = cine()
    ds.add_new(0x5000200C, "OW", b"\x00\x01" * 8)  # Audio Sample Data (retired)
    with pytest.raises(CannotCreateInstance):
        frame_request(keys(SimpleFrameList=[1])).frame_numbers(ds)


def test_referenced_pixel_data_answers_aa02() -> None:
    ds = cine()
    del ds.PixelData
    ds.PixelDataProviderURL = "https://example.org/pixels"
    with pytest.raises(CannotExtractFrames) as caught:
        frame_request(keys(SimpleFrameList=[1])).frame_numbers(ds)
    assert caught.value.status == 0xAA02


# --- The new instance (Y.3.3) ------------------------------------------------------------------


def test_new_instance_holds_the_frames_and_says_where_they_came_from() -> None:
    ds = cine()
    source_uid, study, series = ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    new, expected = extract(ds, frame_request(keys(SimpleFrameList=[2, 3, 4])))
    assert new.SOPInstanceUID == NEW_UID == new.file_meta.MediaStorageSOPInstanceUID
    assert (new.StudyInstanceUID, new.SeriesInstanceUID) == (study, series)
    assert new.SOPClassUID == datagen.UltrasoundMultiFrameImageStorage
    assert new.NumberOfFrames == 3
    assert np.array_equal(new.pixel_array, expected)
    (item,) = new.FrameExtractionSequence
    assert item.MultiFrameSourceSOPInstanceUID == source_uid
    assert list(item.SimpleFrameList) == [2, 3, 4]
    (equipment,) = new.ContributingEquipmentSequence
    (purpose,) = equipment.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109105", "DCM")
    assert purpose.CodeMeaning == "Frame Extracting Equipment"
    assert (new.InstanceCreationDate, new.InstanceCreationTime) == ("20260315", "103045")
    # Frames 2-4 are 33.3 ms apart and start 33.3 ms after the first frame.
    assert (float(new.FrameTime), float(new.FrameDelay)) == (33.3, 33.3)


def test_earlier_extractions_and_contributions_are_kept_and_the_new_one_appended() -> None:
    earlier = Dataset()
    earlier.MultiFrameSourceSOPInstanceUID = "1.2.3"
    earlier.TimeRange = [0.0, 9.0]
    modality = Dataset()
    modality.Manufacturer = "Acme"
    ds = cine(
        FrameExtractionSequence=Sequence([earlier]),
        ContributingEquipmentSequence=Sequence([modality]),
    )
    new, _expected = extract(ds, frame_request(keys(CalculatedFrameList=[1, END, 2])))
    first, second = new.FrameExtractionSequence
    assert first.MultiFrameSourceSOPInstanceUID == "1.2.3"
    assert list(second.CalculatedFrameList) == [1, END, 2]
    assert [item.Manufacturer for item in new.ContributingEquipmentSequence] == ["Acme", "pacsd"]


def test_uneven_frames_get_a_frame_time_vector_and_the_pointer_follows() -> None:
    new, expected = extract(cine(), frame_request(keys(SimpleFrameList=[1, 2, 6])))
    assert "FrameTime" not in new
    assert [float(v) for v in new.FrameTimeVector] == [0.0, 33.3, 133.2]
    assert new.FrameIncrementPointer == 0x00181065
    assert "FrameDelay" not in new  # the first frame is still the first
    assert np.array_equal(new.pixel_array, expected)


def test_private_concatenation_and_source_only_attributes_are_left_out() -> None:
    ds = cine(ConcatenationUID="1.2.3.4", InConcatenationNumber=1, StartTrim=2, StopTrim=7)
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", "vendor value")
    new, _expected = extract(ds, frame_request(keys(SimpleFrameList=[3])))
    for keyword in ("ConcatenationUID", "InConcatenationNumber", "StartTrim", "StopTrim"):
        assert keyword not in new
    assert not any(element.tag.is_private for element in new)


def test_per_frame_groups_and_frame_vectors_keep_the_kept_frames() -> None:
    ds = cine(4)
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [frame_content(f"2026031510150{n}", label=f"F{n}") for n in range(4)]
    )
    ds.FrameLabelVector = ["a", "b", "c", "d"]
    new, _expected = extract(ds, frame_request(keys(SimpleFrameList=[2, 4])))
    labels = [
        item.FrameContentSequence[0].FrameLabel for item in new.PerFrameFunctionalGroupsSequence
    ]
    assert labels == ["F1", "F3"]
    assert list(new.FrameLabelVector) == ["b", "d"]


def test_references_to_own_frames_are_renumbered_or_removed() -> None:
    mask = Dataset()
    mask.MaskOperation = "AVG_SUB"
    mask.MaskFrameNumbers = [1]
    mask.ApplicableFrameRange = [2, 8]
    ds = cine(
        RepresentativeFrameNumber=5,
        FrameNumbersOfInterest=[2, 5, 7],
        FrameOfInterestDescription=["two", "five", "seven"],
        MaskSubtractionSequence=Sequence([mask]),
        RecommendedViewingMode="SUB",
    )
    new, _expected = extract(ds, frame_request(keys(SimpleFrameList=[1, 5, 6, 7])))
    assert new.RepresentativeFrameNumber == 2
    assert list(new.FrameNumbersOfInterest) == [2, 4]
    assert list(new.FrameOfInterestDescription) == ["five", "seven"]
    (kept,) = new.MaskSubtractionSequence
    assert kept.MaskFrameNumbers == 1
    assert list(kept.ApplicableFrameRange) == [2, 4]

    without_mask, _expected = extract(
        cine(MaskSubtractionSequence=Sequence([mask]), RecommendedViewingMode="SUB"),
        frame_request(keys(SimpleFrameList=[3, 4])),
    )
    assert "MaskSubtractionSequence" not in without_mask
    assert "RecommendedViewingMode" not in without_mask


def test_overlays_follow_their_frames_or_go() -> None:
    ds = cine()
    for group, origin in ((0x6000, 3), (0x6002, 1)):
        ds.add_new(group << 16 | 0x0010, "US", 8)  # Overlay Rows
        ds.add_new(group << 16 | 0x0051, "US", origin)  # Image Frame Origin
        ds.add_new(group << 16 | 0x3000, "OW", b"\x00" * 8)
    new, _expected = extract(ds, frame_request(keys(SimpleFrameList=[3, 4])))
    assert new[0x60000051].value == 1
    assert not any(element.tag.group == 0x6002 for element in new)


def test_the_new_instance_encodes() -> None:
    new, _expected = extract(cine(), frame_request(keys(TimeRange=[0.0, 0.04])))
    encoded = encode_dataset(new, ImplicitVRLittleEndian)
    decoded = read_dataset(BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)
    assert decoded.NumberOfFrames == 2
    assert list(decoded.FrameExtractionSequence[0].TimeRange) == [0.0, 0.04]


def test_one_bit_frames_that_are_not_byte_aligned() -> None:
    ds = cine(3, Rows=3, Columns=5, SamplesPerPixel=1, BitsAllocated=1, BitsStored=1, HighBit=0)
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = np.array([1, 0, 1, 1, 0] * 9, dtype=np.uint8)  # 15 bits a frame
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes()
    chosen = native_frames(ds, [2, 3], 3)
    unpacked = np.unpackbits(np.frombuffer(chosen, np.uint8), bitorder="little")
    assert np.array_equal(unpacked[:30], bits[15:45])


def test_short_native_pixel_data_answers_aa02() -> None:
    ds = cine()
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(CannotExtractFrames):
        native_frames(ds, [8], 8)


# --- Encapsulated frames -----------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_frames_stay_compressed(syntax: str) -> None:
    ds, pixels = image_dataset("multiframe")  # 3 frames
    encode_instance(ds, syntax)
    kept = encapsulated_frames(ds, [1, 3], 3, syntax)
    assert kept is not None
    extraction = Extraction(FrameRequest("SimpleFrameList", (1, 3)), (1, 3), 3, NEW_UID, WHEN)
    new = make_new_instance(ds, extraction, encapsulated_pixel_data(kept))
    assert new.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(new.pixel_array, pixels[[0, 2]])


def test_frames_are_found_among_several_fragments_by_their_end_marker() -> None:
    """No offset table, more fragments than frames: JPEG codestreams end with EOI (FFD9)."""
    frame_streams = [b"\xff\xd8" + bytes([n]) * 98 + b"\xff\xd9" for n in range(3)]
    fragments = [part for stream in frame_streams for part in (stream[:40], stream[40:])]
    ds = cine(3)
    ds.PixelData = encapsulate_fragments(fragments)
    assert encapsulated_frames(ds, [2], 3, JPEGBaseline8Bit) == [frame_streams[1]]
    # RLE or video: fragments cannot be grouped into frames without an offset table.
    assert encapsulated_frames(ds, [2], 3, MPEG2MPML) is None


def encapsulate_fragments(fragments: list[bytes]) -> bytes:
    """Encapsulated pixel data with an empty Basic Offset Table, one item per fragment."""
    encoded = encapsulate(fragments, has_bot=False)
    assert fragments_of(encoded) == fragments
    return encoded


def fragments_of(encapsulated: bytes) -> list[bytes]:
    """The fragments of encapsulated pixel data, after its Basic Offset Table."""
    buffer = BytesIO(encapsulated)
    parse_basic_offsets(buffer)
    return [bytes(fragment) for fragment in generate_fragments(buffer)]


def test_the_basic_offset_table_splits_frames_of_several_fragments() -> None:
    streams = [bytes([n]) * 64 for n in range(4)]
    ds = cine(4)
    ds.PixelData = encapsulate(streams, fragments_per_frame=2, has_bot=True)
    assert encapsulated_frames(ds, [1, 4], 4, RLELossless) == [streams[0], streams[3]]
    new_pixels = encapsulated_pixel_data([streams[0], streams[3]])
    assert fragments_of(new_pixels) == [streams[0], streams[3]]


def test_the_extended_offset_table_splits_frames_and_is_left_out_after() -> None:
    streams = [bytes([n]) * 32 for n in range(3)]
    pixels, offsets, lengths = encapsulate_extended(streams)
    ds = cine(3, PixelData=pixels, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths)
    kept = encapsulated_frames(ds, [3], 3, RLELossless)
    assert kept == [streams[2]]
    extraction = Extraction(FrameRequest("SimpleFrameList", (3,)), (3,), 3, NEW_UID, WHEN)
    new = make_new_instance(ds, extraction, encapsulated_pixel_data(kept))
    assert "ExtendedOffsetTable" not in new
    assert "ExtendedOffsetTableLengths" not in new


def test_float_pixel_data_frames() -> None:
    ds = cine(3)
    del ds.PixelData
    values = np.arange(3 * 64 * 64, dtype="<f4")
    ds.FloatPixelData = values.tobytes()
    chosen = np.frombuffer(native_frames(ds, [2], 3), "<f4")
    assert np.array_equal(chosen, values[64 * 64 : 2 * 64 * 64])


# --- Retrieve Without Bulk Data (Z.1.3) --------------------------------------------------------


def waveform_instance() -> Dataset:
    """A 12-lead ECG-like instance: two multiplex groups with their Waveform Data."""
    ds = datagen.basic_text_sr(datagen.StudyContext())
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage
    groups = []
    for number in (1, 2):
        group = Dataset()
        group.MultiplexGroupLabel = f"group {number}"
        group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = 1, 4
        group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 16, "SS"
        group.WaveformData = b"\x01\x00" * 4
        groups.append(group)
    ds.WaveformSequence = Sequence(groups)
    return ds


def test_top_level_bulk_data_is_removed_and_the_icon_image_kept() -> None:
    ds = cine()
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.PixelData = b"\x01\x02\x03\x04"
    ds.IconImageSequence = Sequence([icon])
    ds.SpectroscopyData = b"\x00" * 8
    ds.EncapsulatedDocument = b"%PDF"
    ds.PixelDataProviderURL = "https://example.org/pixels"
    ds.FloatPixelData = b"\x00" * 8
    ds.add_new(0x60020010, "US", 8)  # Overlay Rows: kept
    ds.add_new(0x60023000, "OW", b"\x00" * 8)  # Overlay Data: removed
    ds.add_new(0x50003000, "OW", b"\x00" * 8)  # Curve Data
    ds.add_new(0x5000200C, "OW", b"\x00" * 8)  # Audio Sample Data
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "OB", b"\x00" * 16)
    before = {element.tag for element in ds}
    removed = without_bulk_data(ds)
    assert sorted(removed) == sorted(
        [
            "PixelData", "FloatPixelData", "PixelDataProviderURL", "SpectroscopyData",
            "EncapsulatedDocument", "OverlayData", "CurveData", "AudioSampleData",
        ]
    )  # fmt: skip
    gone = {0x7FE00010, 0x7FE00008, 0x00287FE0, 0x56000020, 0x00420011, 0x60023000}
    gone |= {0x50003000, 0x5000200C}
    assert before - {element.tag for element in ds} == gone
    assert ds.IconImageSequence[0].PixelData == b"\x01\x02\x03\x04"
    assert ds[0x60020010].value == 8


def test_waveform_data_is_removed_from_the_waveform_sequence_only() -> None:
    ds = waveform_instance()
    assert without_bulk_data(ds) == ["WaveformData", "WaveformData"]
    assert [group.MultiplexGroupLabel for group in ds.WaveformSequence] == ["group 1", "group 2"]
    assert all("WaveformData" not in group for group in ds.WaveformSequence)


def test_an_instance_without_bulk_data_is_unchanged() -> None:
    ds = datagen.basic_text_sr(datagen.StudyContext())
    before = encode_dataset(ds, ExplicitVRLittleEndian)
    assert without_bulk_data(ds) == []
    assert encode_dataset(ds, ExplicitVRLittleEndian) == before


def test_the_syntax_after_bulk_data_is_removed() -> None:
    ds = cine()
    ds.file_meta.TransferSyntaxUID = UID(RLELossless)
    assert bulk_free_syntax(ds, [RLELossless, ExplicitVRLittleEndian]) == RLELossless
    assert bulk_free_syntax(ds, [ImplicitVRLittleEndian]) == ImplicitVRLittleEndian
    # Without top-level pixel data a JPEG syntax encodes as Explicit VR Little Endian.
    assert bulk_free_syntax(ds, [JPEGBaseline8Bit]) == JPEGBaseline8Bit
    icon = Dataset()
    icon.PixelData = encapsulate([b"\x00\x01"])
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = Sequence([icon])
    with pytest.raises(TranscodeError):
        bulk_free_syntax(ds, [ExplicitVRLittleEndian])


def test_frames_module_names_the_statuses_of_table_y_4() -> None:
    statuses = [
        frames.NoFramesFound, frames.CannotCreateInstance, frames.CannotExtractFrames,
        frames.NotTimeBased, frames.InvalidFrameRequest,
    ]  # fmt: skip
    assert [error.status for error in statuses] == [0xAA00, 0xAA01, 0xAA02, 0xAA03, 0xAA04]
