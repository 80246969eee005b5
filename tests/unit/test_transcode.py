"""Choosing a transfer syntax for C-GET / C-MOVE sub-operations, and transcoding real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pacsd.dicom.transcode import (
    TranscodeError,
    can_decode,
    can_encode,
    can_send_as_stored,
    choose_transfer_syntax,
    transcoded_dataset,
    transfer_syntax_candidates,
)
from tests import datagen
from tests.compressed import compressed_ct_dataset, encode_instance, image_dataset, write_instance

EVRLE, IVRLE = ExplicitVRLittleEndian, ImplicitVRLittleEndian
DEFLATED = DeflatedExplicitVRLittleEndian
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
NATIVE = [EVRLE, IVRLE, DEFLATED]
LOSSLESS_COMPRESSED = [RLELossless, JPEGLSLossless, JPEG2000Lossless]
LOSSLESS_SOURCES = [*NATIVE, ExplicitVRBigEndian, *LOSSLESS_COMPRESSED]
# (syntax, kind): each lossy encoder with images it supports
LOSSY_SOURCES = [(JPEGBaseline8Bit, kind) for kind in ("mono8", "odd8", "rgb_multiframe")]
LOSSY_SOURCES += [(JPEGExtended12Bit, "multiframe"), (JPEGLSNearLossless, "mono16")]
LOSSY_SOURCES += [(JPEG2000, "signed16"), (JPEG2000, "rgb8")]


def name(uid: str) -> str:
    """A test id for a transfer syntax (other values as they are)."""
    return (UID(uid).keyword or uid) if uid[:1].isdigit() else uid


def sent(ds: Dataset, tmp_path: Path) -> Dataset:
    """`ds` written in its file meta's transfer syntax and read back, as a receiver sees it."""
    path = tmp_path / "sent.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path)


CHOICES = [
    # (stored, accepted, chosen)
    (EVRLE, [IVRLE, EVRLE], EVRLE),  # stored accepted: sent as it is
    (RLELossless, [EVRLE, RLELossless], RLELossless),
    (JPEGLSLossless, [JPEG2000Lossless, IVRLE], IVRLE),  # uncompressed before lossless
    (RLELossless, [IVRLE, DEFLATED, EVRLE], EVRLE),  # pacsd's uncompressed order
    (JPEG2000Lossless, [DEFLATED, RLELossless], DEFLATED),
    (EVRLE, [JPEGBaseline8Bit, RLELossless], RLELossless),  # never a lossy encoding
    (EVRLE, [JPEG2000Lossless, JPEGLSLossless], JPEG2000Lossless),  # receiver's lossless order
    (IVRLE, [JPEGLSLossless, JPEG2000Lossless], JPEGLSLossless),
    (JPEG2000Lossless, [JPEGBaseline8Bit], None),  # lossless stored, only lossy accepted
    (EVRLE, [JPEG2000, JPEGLSNearLossless, JPEGBaseline8Bit], None),
    (JPEGBaseline8Bit, [EVRLE], EVRLE),  # decoding lossy data adds no loss
    (JPEGBaseline8Bit, [JPEG2000], None),
    (JPEGBaseline8Bit, [JPEGExtended12Bit], None),
    (JPEGExtended12Bit, [JPEGLSLossless], JPEGLSLossless),
    (HTJ2KLossless, [IVRLE], IVRLE),
    (EVRLE, [JPEGLosslessSV1, JPEGLossless], None),  # no encoder in pydicom 3.0
    (EVRLE, [ExplicitVRBigEndian], None),  # pydicom cannot swap word values when writing
    (ExplicitVRBigEndian, [IVRLE], IVRLE),
    (DEFLATED, [IVRLE], IVRLE),
    (EVRLE, [DEFLATED], DEFLATED),
    (MPEG2MPML, [EVRLE], None),  # no decoder
    (JPEG_XL_LOSSLESS, [EVRLE, RLELossless], None),
    ("1.2.3.4.5", [EVRLE], None),  # unknown private syntax
    (EVRLE, [], None),
]


@pytest.mark.parametrize(
    ("stored", "accepted", "chosen"),
    CHOICES,
    ids=[f"{name(s)}-to-{'+'.join(map(name, a)) or 'nothing'}" for s, a, _ in CHOICES],
)
def test_choose_transfer_syntax(stored: str, accepted: list[str], chosen: str | None) -> None:
    """The stored syntax when accepted, else uncompressed, else lossless; never lossy."""
    assert choose_transfer_syntax(stored, accepted) == chosen


def test_can_send_as_stored() -> None:
    """Only the stored syntax itself lets the file go untouched."""
    assert can_send_as_stored(RLELossless, [EVRLE, RLELossless])
    assert not can_send_as_stored(RLELossless, [EVRLE, JPEGLSLossless])
    assert not can_send_as_stored(RLELossless, [])


def test_candidates_list_every_conversion_best_first() -> None:
    """Callers can fall back along the list when an encoder refuses a particular image."""
    accepted = [JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, DEFLATED, IVRLE]
    expected = [IVRLE, DEFLATED, JPEG2000Lossless, RLELossless]
    assert transfer_syntax_candidates(JPEGLSLossless, accepted) == expected
    assert transfer_syntax_candidates(EVRLE, [*accepted, EVRLE])[0] == EVRLE


def test_installed_plugins_decode_and_encode_what_pacsd_expects() -> None:
    """pylibjpeg (libjpeg, openjpeg, rle), pyjpegls and pydicom's RLE cover these syntaxes."""
    decodable = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1]
    decodable += [JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000]
    decodable += [HTJ2KLossless, RLELossless, *NATIVE, ExplicitVRBigEndian]
    assert all(can_decode(uid) for uid in decodable)
    assert not can_decode(JPEG_XL_LOSSLESS)
    assert not can_decode(MPEG2MPML)
    assert all(can_encode(uid) for uid in [*NATIVE, *LOSSLESS_COMPRESSED])
    for refused in (ExplicitVRBigEndian, JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless):
        assert not can_encode(refused)


# pydicom's encoders refuse 32-bit samples (see below), so only native files hold them.
DECODE_CASES = [
    (stored, kind)
    for stored in LOSSLESS_SOURCES
    for kind in ("mono16", "signed16", "multiframe", "rgb8", "odd8", "mono32")
    if kind != "mono32" or stored not in LOSSLESS_COMPRESSED
]


@pytest.mark.parametrize(("stored", "kind"), DECODE_CASES, ids=name)
@pytest.mark.parametrize("target", [EVRLE, IVRLE], ids=name)
def test_lossless_sources_decode_to_identical_native_pixels(
    tmp_path: Path, stored: str, kind: str, target: str
) -> None:
    """Lossless stored data comes out bit for bit, labelled with the target syntax."""
    original = write_instance(tmp_path / "stored.dcm", stored, kind)
    ds = transcoded_dataset(tmp_path / "stored.dcm", target)
    assert ds.file_meta.TransferSyntaxUID == target
    received = sent(ds, tmp_path)
    assert received.file_meta.TransferSyntaxUID == target
    assert np.array_equal(received.pixel_array, original)


@pytest.mark.parametrize(
    "kind", ["mono8", "mono12", "mono16", "signed16", "multiframe", "rgb8", "rgb_multiframe"]
)
@pytest.mark.parametrize("target", LOSSLESS_COMPRESSED, ids=name)
def test_native_pixels_round_trip_through_lossless_compression(
    tmp_path: Path, target: str, kind: str
) -> None:
    """Explicit VR Little Endian to RLE, JPEG-LS or JPEG 2000 lossless decodes identically."""
    original = write_instance(tmp_path / "stored.dcm", EVRLE, kind)
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", target), tmp_path)
    assert received.file_meta.TransferSyntaxUID == target
    assert received["PixelData"].is_undefined_length  # encapsulated (PS3.5 A.4)
    assert np.array_equal(received.pixel_array, original)


@pytest.mark.parametrize(
    ("stored", "target"),
    [
        (JPEG2000Lossless, RLELossless),
        (RLELossless, JPEGLSLossless),
        (JPEGLSLossless, JPEG2000Lossless),
        (ExplicitVRBigEndian, JPEGLSLossless),
    ],
    ids=name,
)
def test_lossless_to_another_lossless_compression(tmp_path: Path, stored: str, target: str) -> None:
    """Decoding one lossless syntax and encoding another keeps every frame exact."""
    original = write_instance(tmp_path / "stored.dcm", stored, "multiframe")
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", target), tmp_path)
    assert received.NumberOfFrames == 3
    assert np.array_equal(received.pixel_array, original)


@pytest.mark.parametrize("stored", [*LOSSLESS_COMPRESSED, EVRLE], ids=name)
def test_lossless_ybr_full_keeps_its_colour_space(tmp_path: Path, stored: str) -> None:
    """YBR_FULL from a lossless syntax is not converted to RGB, which would round values."""
    original = write_instance(tmp_path / "stored.dcm", stored, "ybr8")
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", IVRLE), tmp_path)
    assert received.PhotometricInterpretation == "YBR_FULL"
    assert received.PixelData == original.tobytes()


def test_jpeg_2000_rct_colour_decodes_to_rgb(tmp_path: Path) -> None:
    """J2K's reversible colour transform is undone and the interpretation becomes RGB."""
    ds, original = image_dataset("rgb8")
    ds.PhotometricInterpretation = "YBR_RCT"  # PS3.5 8.2.4: encode with the RCT
    encode_instance(ds, JPEG2000Lossless)
    ds.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", EVRLE), tmp_path)
    assert received.PhotometricInterpretation == "RGB"
    assert np.array_equal(received.pixel_array, original)


@pytest.mark.parametrize(("stored", "kind"), LOSSY_SOURCES, ids=name)
@pytest.mark.parametrize("target", [EVRLE, JPEGLSLossless], ids=name)
def test_lossy_sources_decode_without_further_loss(
    tmp_path: Path, stored: str, kind: str, target: str
) -> None:
    """The pixels sent are those the stored codestream decodes to; the lossy flag stays."""
    original = write_instance(tmp_path / "stored.dcm", stored, kind)
    reference = dcmread(tmp_path / "stored.dcm").pixel_array  # pydicom's decode, as RGB
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", target), tmp_path)
    assert np.array_equal(received.pixel_array, reference)
    assert np.abs(reference.astype(int) - original.astype(int)).max() <= 8  # the encoder works
    assert received.LossyImageCompression == "01"  # PS3.3 C.7.6.1.1.5


@pytest.mark.parametrize("kind", ["rgb8", "rgb_multiframe"])
def test_jpeg_ybr_full_422_decodes_to_rgb(tmp_path: Path, kind: str) -> None:
    """JPEG YBR_FULL_422 becomes native RGB, colour-by-pixel, full size (PS3.5 8.2.1)."""
    write_instance(tmp_path / "stored.dcm", JPEGBaseline8Bit, kind)
    assert dcmread(tmp_path / "stored.dcm").PhotometricInterpretation == "YBR_FULL_422"
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", EVRLE), tmp_path)
    assert received.PhotometricInterpretation == "RGB"
    assert received.PlanarConfiguration == 0
    frames = int(received.get("NumberOfFrames", 1))
    assert len(received.PixelData) == frames * received.Rows * received.Columns * 3


@pytest.mark.parametrize("stored", [JPEGLSNearLossless, JPEG2000], ids=name)
def test_lossy_ybr_full_outside_jpeg_keeps_its_colour_space(tmp_path: Path, stored: str) -> None:
    """Only JPEG's YCbCr becomes RGB; other lossy YBR_FULL is sent without a rounding step."""
    write_instance(tmp_path / "stored.dcm", stored, "ybr8")
    reference = dcmread(tmp_path / "stored.dcm")
    reference.decompress(as_rgb=False, generate_instance_uid=False)
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", EVRLE), tmp_path)
    assert received.PhotometricInterpretation == "YBR_FULL"
    assert received.PixelData == reference.PixelData


@pytest.mark.parametrize(
    ("stored", "target"), [(JPEG2000Lossless, EVRLE), (EVRLE, RLELossless), (DEFLATED, IVRLE)]
)
def test_sop_instance_uid_is_kept(tmp_path: Path, stored: str, target: str) -> None:
    """A lossless change of encoding is the same instance (pydicom would mint a new UID)."""
    write_instance(tmp_path / "stored.dcm", stored, "mono16")
    before = dcmread(tmp_path / "stored.dcm")
    ds = transcoded_dataset(tmp_path / "stored.dcm", target)
    assert ds.SOPInstanceUID == before.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID


@pytest.mark.parametrize("kind", ["sr", "pdf"])
@pytest.mark.parametrize("stored", [*NATIVE, ExplicitVRBigEndian], ids=name)
@pytest.mark.parametrize("target", NATIVE, ids=name)
def test_datasets_without_pixels_re_encode(
    tmp_path: Path, kind: str, stored: str, target: str
) -> None:
    """SR and PDF instances move between uncompressed syntaxes with their content intact."""
    study = datagen.StudyContext()
    original = datagen.basic_text_sr(study) if kind == "sr" else datagen.encapsulated_pdf(study)
    datagen.write_part10(original, tmp_path / "stored.dcm", stored)
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", target), tmp_path)
    assert received.file_meta.TransferSyntaxUID == target
    if kind == "sr":
        assert received.ContentSequence[0].TextValue == "No acute findings."
    else:
        assert received.EncapsulatedDocument == original.EncapsulatedDocument
    assert received.SOPInstanceUID == original.SOPInstanceUID


def test_dataset_without_pixels_is_relabelled_for_an_encapsulated_syntax(tmp_path: Path) -> None:
    """Without Pixel Data an encapsulated syntax is Explicit VR Little Endian (PS3.5 A.4)."""
    datagen.write_part10(
        datagen.basic_text_sr(datagen.StudyContext()), tmp_path / "stored.dcm", IVRLE
    )
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", RLELossless), tmp_path)
    assert received.file_meta.TransferSyntaxUID == RLELossless
    assert "PixelData" not in received
    assert received.ContentSequence[0].TextValue == "No acute findings."


def test_big_endian_word_values_are_swapped(tmp_path: Path) -> None:
    """OW values besides Pixel Data (here Overlay Data) are turned to little endian too."""
    ds, original = image_dataset("mono16")
    overlay = np.arange(64 * 64 // 16, dtype="<u2").tobytes()  # 1 bit per pixel, OW words
    # Overlay Plane module (PS3.3 C.9.2): rows, columns, type, origin, bits, bit position, data
    for element, vr, value in [(0x10, "US", 64), (0x11, "US", 64), (0x40, "CS", "G")]:
        ds.add_new(0x60000000 | element, vr, value)
    for element, vr, value in [(0x50, "SS", [1, 1]), (0x100, "US", 1), (0x102, "US", 0)]:
        ds.add_new(0x60000000 | element, vr, value)
    ds.add_new(0x60003000, "OW", overlay)
    encode_instance(ds, ExplicitVRBigEndian)
    ds.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", EVRLE), tmp_path)
    assert received[0x60003000].value == overlay
    assert received[0x60000050].value == [1, 1]
    assert received.Rows == 64
    assert np.array_equal(received.pixel_array, original)


def test_big_endian_un_value_is_refused(tmp_path: Path) -> None:
    """An element of unknown VR has no known word size to swap."""
    ds, _ = image_dataset("mono8")
    ds.private_block(0x0009, "PACSD TEST", create=True).add_new(0x10, "UN", b"\x01\x02\x03\x04")
    encode_instance(ds, ExplicitVRBigEndian)
    ds.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    with pytest.raises(TranscodeError, match="VR UN"):
        transcoded_dataset(tmp_path / "stored.dcm", EVRLE)


def test_extended_offset_table_is_dropped_with_the_fragments(tmp_path: Path) -> None:
    """The Extended Offset Table indexes encapsulated frames only (PS3.5 A.4)."""
    ds, original = image_dataset("multiframe")
    ds.compress(RLELossless, encapsulate_ext=True, generate_instance_uid=False)
    ds.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    assert "ExtendedOffsetTable" in dcmread(tmp_path / "stored.dcm")
    received = sent(transcoded_dataset(tmp_path / "stored.dcm", EVRLE), tmp_path)
    assert "ExtendedOffsetTable" not in received
    assert "ExtendedOffsetTableLengths" not in received
    assert np.array_equal(received.pixel_array, original)


@pytest.mark.parametrize("stored", [*LOSSLESS_COMPRESSED, JPEGBaseline8Bit], ids=name)
def test_corrupt_codestream_raises(tmp_path: Path, stored: str) -> None:
    """Fragments that are no codestream fail with a short reason for the Error Comment."""
    ds, _ = image_dataset("mono8")
    encode_instance(ds, stored)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    ds.save_as(tmp_path / "stored.dcm", enforce_file_format=True)
    with pytest.raises(TranscodeError) as raised:
        transcoded_dataset(tmp_path / "stored.dcm", EVRLE)
    assert "cannot be decoded" in str(raised.value)
    assert len(str(raised.value)) <= 64


def test_truncated_compressed_file_raises(tmp_path: Path) -> None:
    """A file cut inside its pixel data is refused (pydicom alone would drop the Pixel Data)."""
    write_instance(tmp_path / "stored.dcm", JPEG2000Lossless, "mono16")
    data = (tmp_path / "stored.dcm").read_bytes()
    (tmp_path / "stored.dcm").write_bytes(data[: len(data) - len(data) // 3])
    with pytest.raises(TranscodeError, match=r"^stored file: "):
        transcoded_dataset(tmp_path / "stored.dcm", EVRLE)


def test_unreadable_files_raise(tmp_path: Path) -> None:
    """A missing file or one that is not DICOM becomes a TranscodeError."""
    with pytest.raises(TranscodeError, match="cannot be read"):
        transcoded_dataset(tmp_path / "missing.dcm", EVRLE)
    (tmp_path / "text.dcm").write_bytes(b"not DICOM at all" * 20)
    with pytest.raises(TranscodeError, match="not a DICOM Part 10 stream"):
        transcoded_dataset(tmp_path / "text.dcm", EVRLE)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (JPEGBaseline8Bit, "will not encode lossy JPEGBaseline8Bit"),
        (JPEG2000, "will not encode lossy JPEG2000"),
        (JPEGLSNearLossless, "will not encode lossy JPEGLSNearLossless"),
        (JPEGLosslessSV1, "no encoder for JPEGLosslessSV1"),
        (ExplicitVRBigEndian, "pydicom cannot convert to big endian"),
        (MPEG2MPML, "will not encode lossy MPEG2MPML"),
        ("1.2.3.4.5", "unknown transfer syntax 1.2.3.4.5"),
    ],
    ids=lambda value: name(value).replace(" ", "-"),
)
def test_targets_pacsd_will_not_write(tmp_path: Path, target: str, reason: str) -> None:
    """Lossy encodings, missing encoders and big endian are refused before reading."""
    write_instance(tmp_path / "stored.dcm", EVRLE, "mono8")
    with pytest.raises(TranscodeError) as raised:
        transcoded_dataset(tmp_path / "stored.dcm", target)
    assert str(raised.value) == reason


@pytest.mark.parametrize("target", LOSSLESS_COMPRESSED, ids=name)
def test_image_an_encoder_cannot_take_raises(tmp_path: Path, target: str) -> None:
    """32-bit samples exceed JPEG-LS and JPEG 2000, and pydicom's RLE encoder refuses them."""
    write_instance(tmp_path / "stored.dcm", EVRLE, "mono32")
    with pytest.raises(TranscodeError, match=f"cannot be encoded as {name(target)}"):
        transcoded_dataset(tmp_path / "stored.dcm", target)


@pytest.mark.parametrize(
    "syntax",
    [
        *NATIVE,
        ExplicitVRBigEndian,
        *LOSSLESS_COMPRESSED,
        *dict.fromkeys(s for s, _ in LOSSY_SOURCES),
    ],
    ids=name,
)
def test_compressed_ct_dataset_is_a_complete_instance(tmp_path: Path, syntax: str) -> None:
    """The integration-test helper gives a CT with its own UIDs, file meta and decodable pixels."""
    ds = compressed_ct_dataset(syntax)
    assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    uids = {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    assert len(uids) == 3
    assert ds.PatientID
    received = sent(ds, tmp_path)
    assert received.file_meta.TransferSyntaxUID == syntax
    assert received.pixel_array.shape == (64, 64)
