"""Generate DICOM test instances with pydicom: no binary test data lives in the repository."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

TEST_UID_ROOT = "1.2.826.0.1.3680043.10.1307."  # pydicom's documented test-UID arrangement


@dataclass
class StudyContext:
    """UIDs and patient data shared by the instances of one generated study."""

    patient_id: str = "PAT-0001"
    patient_name: str = "Doe^Jane"
    study_instance_uid: str = field(default_factory=lambda: generate_uid(TEST_UID_ROOT))
    series_instance_uid: str = field(default_factory=lambda: generate_uid(TEST_UID_ROOT))
    accession_number: str = "ACC-1"
    study_date: str = "20260315"


def _base(sop_class_uid: str, study: StudyContext, number: int, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = study.series_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = study.accession_number
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.StudyDescription = "Generated study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Generated {modality}"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = number
    return ds


def _pixels(ds: Dataset, rows: int, columns: int, frames: int = 1, samples: int = 1) -> None:
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    bits = 8 if samples == 3 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(int(ds.InstanceNumber))
    dtype = np.uint8 if bits == 8 else np.uint16
    shape = (frames, rows, columns, samples) if frames > 1 else (rows, columns, samples)
    data = rng.integers(0, 255 if bits == 8 else 4095, size=shape, dtype=dtype)
    ds.PixelData = data.tobytes()


def ct_image(study: StudyContext, number: int = 1, size: int = 512) -> Dataset:
    """A CT image; 512x512x16 bits is the 0.5 MB instance of the benchmarks."""
    ds = _base(CTImageStorage, study, number, "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    _pixels(ds, size, size)
    return ds


def mr_image(study: StudyContext, number: int = 1) -> Dataset:
    """A small MR image."""
    ds = _base(MRImageStorage, study, number, "MR")
    _pixels(ds, 128, 128)
    return ds


def cr_image(study: StudyContext, number: int = 1) -> Dataset:
    """A small CR image."""
    ds = _base(ComputedRadiographyImageStorage, study, number, "CR")
    _pixels(ds, 256, 256)
    return ds


def us_multiframe(study: StudyContext, number: int = 1, frames: int = 8) -> Dataset:
    """A multi-frame RGB ultrasound cine."""
    ds = _base(UltrasoundMultiFrameImageStorage, study, number, "US")
    ds.FrameTime = 33.3
    _pixels(ds, 64, 64, frames=frames, samples=3)
    return ds


# Ultrasound Image Storage (Retired), PS3.6 Table A-1: what ultrasound modalities of the 1990s
# still send. And a vendor's private SOP class (Siemens CSA Non-Image Storage).
ULTRASOUND_IMAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
PRIVATE_SOP_CLASS = "1.3.12.2.1107.5.9.1"


def us_image_retired(study: StudyContext, number: int = 1) -> Dataset:
    """A single-frame ultrasound image of the retired Ultrasound Image Storage class."""
    ds = _base(ULTRASOUND_IMAGE_RETIRED, study, number, "US")
    _pixels(ds, 64, 64)
    return ds


def private_object(study: StudyContext, number: int = 1) -> Dataset:
    """An instance of a vendor's private SOP class: no pixels, a private block of bytes."""
    ds = _base(PRIVATE_SOP_CLASS, study, number, "CT")
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 4)
    return ds


def basic_text_sr(study: StudyContext, number: int = 1) -> Dataset:
    """A Basic Text SR with one text item (a sequence-heavy, pixel-free instance)."""
    ds = _base(BasicTextSRStorage, study, number, "SR")
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "121070", "DCM"
    concept.CodeMeaning = "Findings"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([concept])
    item.TextValue = "No acute findings."
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ContentSequence = Sequence([item])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds


def encapsulated_pdf(study: StudyContext, number: int = 1) -> Dataset:
    """An Encapsulated PDF document (bulk data that is not pixel data)."""
    ds = _base(EncapsulatedPDFStorage, study, number, "DOC")
    document = b"%PDF-1.4\n" + b"0" * 4000 + b"\n%%EOF\n"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Generated report"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = document
    return ds


def with_encapsulated_pixels(ds: Dataset, frames: int = 1) -> Dataset:
    """Replace native pixel data by encapsulated fragments (content never decoded by pacsd)."""
    fragments = [bytes([n % 251]) * 3001 + b"\xff\xd9" for n in range(frames)]
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    return ds


def write_part10(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write `ds` as a Part 10 file encoded in `transfer_syntax`."""
    syntax = UID(transfer_syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax == RLELossless and "PixelData" in ds:
        ds.compress(RLELossless, encoding_plugin="pydicom")  # a real RLE encoding
    elif syntax.is_compressed and syntax != DeflatedExplicitVRLittleEndian:
        with_encapsulated_pixels(ds, int(ds.get("NumberOfFrames", 1)))
    meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_series(
    folder: Path, count: int, size: int = 64, study: StudyContext | None = None
) -> Iterator[Path]:
    """`count` CT files of one series in `folder`."""
    study = study or StudyContext()
    for number in range(1, count + 1):
        yield write_part10(ct_image(study, number, size), folder / f"ct{number:05d}.dcm")
