"""Parsing an incoming Part 10 file: index attributes and the bulk-free JSON header."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless

from pacsd.dicom.header import index_text
from pacsd.dicom.instance import ParsedInstance, parse_part10
from pacsd.errors import CannotUnderstand, DatasetMismatch, OutOfResources
from tests import datagen

LIMIT = 64 * 1024 * 1024


def parse(path: Path, limit: int = LIMIT) -> ParsedInstance:
    """parse_part10 on a file."""
    with path.open("rb") as fp:
        return parse_part10(fp, limit)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, RLELossless]
)
def test_attributes_in_any_syntax(tmp_path: Path, syntax: str) -> None:
    """Index attributes are read the same from big endian, deflated and compressed files."""
    study = datagen.StudyContext(patient_id="P-9", patient_name="Müller^Jürgen")
    dataset = datagen.ct_image(study, 7, 32)
    parsed = parse(datagen.write_part10(dataset, tmp_path / "ct.dcm", syntax))
    attributes = parsed.attributes
    assert attributes.patient_id == "P-9"
    assert attributes.patient_name == "Müller^Jürgen"  # ISO_IR 100 decoded
    assert attributes.study_instance_uid == study.study_instance_uid
    assert attributes.modality == "CT"
    assert attributes.series_number == 1
    assert attributes.instance_number == 7
    assert str(parsed.layout.transfer_syntax_uid) == syntax


def test_header_keeps_text_and_drops_bulk(tmp_path: Path) -> None:
    """The JSON header has every attribute except pixel data and other large binary values."""
    dataset = datagen.encapsulated_pdf(datagen.StudyContext(), 1)
    parsed = parse(datagen.write_part10(dataset, tmp_path / "pdf.dcm"))
    header = parsed.header
    assert header["00420012"]["Value"] == ["application/pdf"]
    assert "00420011" not in header
    assert header["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_sequences_survive_in_the_header(tmp_path: Path) -> None:
    """Sequence items are kept (DICOM JSON model, PS3.18 F.2)."""
    dataset = datagen.basic_text_sr(datagen.StudyContext(), 1)
    header = parse(datagen.write_part10(dataset, tmp_path / "sr.dcm")).header
    [item] = header["0040A730"]["Value"]
    assert item["0040A160"]["Value"] == ["No acute findings."]


def test_header_is_pydicoms_json_without_bulk(tmp_path: Path) -> None:
    """Element for element what pydicom's to_json_dict gives, nested items included, with
    only pixel data and binary values over 1 KiB left out (anywhere in the tree)."""
    dataset = datagen.basic_text_sr(datagen.StudyContext(), 1)
    dataset.ReferencedPerformedProcedureStepSequence = []  # an empty sequence
    dataset.ContentSequence[0].add_new(0x00091010, "OB", b"\x01" * 2000)  # bulk inside an item
    dataset.add_new(0x00091011, "OB", b"\x02" * 16)  # small binary: InlineBinary
    parsed = parse(datagen.write_part10(dataset, tmp_path / "sr.dcm"))
    expected = dataset.to_json_dict()
    del expected["0040A730"]["Value"][0]["00091010"]
    assert parsed.header == expected
    assert parsed.header["00091011"]["InlineBinary"]
    assert parsed.header["00081111"] == {"vr": "SQ", "Value": []}


def test_missing_identifying_uid_is_a_mismatch(tmp_path: Path) -> None:
    """Without a Series Instance UID the instance cannot be filed: DatasetMismatch."""
    dataset = datagen.ct_image(datagen.StudyContext(), 1, 16)
    del dataset.SeriesInstanceUID
    with pytest.raises(DatasetMismatch, match="SeriesInstanceUID"):
        parse(datagen.write_part10(dataset, tmp_path / "x.dcm"))


def test_not_dicom_is_cannot_understand(tmp_path: Path) -> None:
    """Random bytes are refused as not understood."""
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 128 + b"JUNK" + b"\x01" * 300)
    with pytest.raises(CannotUnderstand):
        parse(path)


def test_inflation_is_bounded(tmp_path: Path) -> None:
    """A deflated data set inflating beyond the limit is refused before it is held."""
    dataset = datagen.ct_image(datagen.StudyContext(), 1, 256)
    path = datagen.write_part10(dataset, tmp_path / "big.dcm", DeflatedExplicitVRLittleEndian)
    with pytest.raises(OutOfResources, match="inflates beyond"):
        parse(path, limit=10_000)


@pytest.mark.parametrize(
    ("charset", "patient_name"),
    [
        ("ISO_IR 100", "Müller^Jürgen"),
        ("ISO_IR 192", "Ωμέγα^Λάμδα"),
        (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("", "Doe^John=="),
        ("", "Doe^John^^^Jr"),
    ],
)
def test_index_attributes_are_what_pydicom_reads(
    tmp_path: Path, charset: str | list[str], patient_name: str
) -> None:
    """The attributes taken from the JSON header equal `index_text` on pydicom's own data set,
    person name components, character sets, multiple values and numbers included."""
    dataset = datagen.ct_image(datagen.StudyContext(), 12, 16)
    dataset.SpecificCharacterSet = charset or "ISO_IR 6"
    dataset.PatientName = patient_name
    dataset.StudyDescription = "  padded  "
    dataset.Modality = "CT"
    dataset.SeriesNumber = "0003"
    dataset.ReferringPhysicianName = ["A^B", "C^D"]  # multiple values
    dataset.AccessionNumber = ""  # empty
    del dataset.BodyPartExamined  # absent
    path = datagen.write_part10(dataset, tmp_path / "ct.dcm")
    parsed = parse(path)
    reread = dcmread(path)
    for field in dataclasses.fields(parsed.attributes):
        keyword = "".join(part.capitalize() for part in field.name.split("_"))
        keyword = {"PatientId": "PatientID", "IssuerOfPatientId": "IssuerOfPatientID",
                   "StudyInstanceUid": "StudyInstanceUID", "StudyId": "StudyID",
                   "SeriesInstanceUid": "SeriesInstanceUID", "SopInstanceUid": "SOPInstanceUID",
                   "SopClassUid": "SOPClassUID"}.get(keyword, keyword)  # fmt: skip
        expected: object = index_text(reread, keyword)
        if field.name in ("series_number", "instance_number"):
            expected = int(str(expected)) if expected else None
        assert getattr(parsed.attributes, field.name) == expected, field.name
    assert parsed.attributes.patient_name == str(reread.PatientName)
