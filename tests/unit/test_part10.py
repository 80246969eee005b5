"""pacsd's packed file meta (dicom/part10.py) against pydicom's own writer and reader."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from pacsd.dicom.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PREAMBLE,
    encode_file_meta,
    read_layout,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _pydicom_file_meta(sop_class: str, sop_instance: str, syntax: str, source_ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


@pytest.mark.parametrize(
    ("sop_instance", "syntax", "source_ae"),
    [
        ("1.2.3.4", EXPLICIT, "STORESCU"),  # even UID, even AE title
        ("1.2.3.45", "1.2.840.10008.1.2", "CT1"),  # odd UID, odd AE title, implicit VR
        ("1.2.826.0.1.3680043.8.498.10123456789012345678901234567890123456", EXPLICIT, ""),
    ],
)
def test_packed_file_meta_equals_pydicoms(sop_instance: str, syntax: str, source_ae: str) -> None:
    packed = encode_file_meta(CT, sop_instance, syntax, source_ae)
    assert packed == _pydicom_file_meta(CT, sop_instance, syntax, source_ae)


def test_packed_file_meta_reads_back() -> None:
    packed = encode_file_meta(CT, "1.2.3.45", EXPLICIT, "MODALITY")
    layout = read_layout(io.BytesIO(packed + b"\x08\x00\x16\x00UI\x02\x001\x00"))
    assert layout.dataset_offset == len(packed)
    assert layout.meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert layout.meta.SourceApplicationEntityTitle == "MODALITY"
    assert layout.transfer_syntax_uid == EXPLICIT
