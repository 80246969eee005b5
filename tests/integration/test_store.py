"""C-ECHO and C-STORE against a real pacsd, with pynetdicom as the SCU.

The C-STORE tests run on both storage backends (fixture `storage`: the filesystem, and S3 on a
SeaweedFS for the module), reading what was stored through `StoredFiles`; the C-ECHO and
logging tests store nothing and run once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from tests import datagen
from tests.conftest import ArchiveStorage
from tests.harness import PacsdProcess, StoredFiles, echo, pacsd_command
from tests.inspect_archive import dataset_bytes, file_meta, index_rows
from tests.scu import store_files

# (generator, transfer syntax): SOP classes and encodings a PACS meets every day.
CASES: list[tuple[Callable[[datagen.StudyContext, int], Dataset], str]] = [
    (datagen.ct_image, ExplicitVRLittleEndian),
    (datagen.ct_image, ImplicitVRLittleEndian),
    (datagen.mr_image, ExplicitVRBigEndian),
    (datagen.cr_image, DeflatedExplicitVRLittleEndian),
    (datagen.us_multiframe, RLELossless),
    (datagen.basic_text_sr, ImplicitVRLittleEndian),
    (datagen.encapsulated_pdf, ExplicitVRLittleEndian),
    (datagen.ct_image, JPEG2000Lossless),
    (datagen.cr_image, JPEGLSLossless),
    (datagen.mr_image, JPEGBaseline8Bit),
    (datagen.us_multiframe, MPEG4HP41),
]


def test_c_echo_succeeds_and_logs_the_association(server: PacsdProcess) -> None:
    """C-ECHO answers success; the association's lines carry its id, AE titles and peer."""
    assert echo(server.host, server.port, calling="ECHOTEST")
    server.stop()
    lines = [line for line in server.lines if line.get("calling_ae_title") == "ECHOTEST"]
    dimse = [line for line in lines if line["event"] == "dimse"]
    assert [line["operation"] for line in dimse] == ["C-ECHO"]
    assert dimse[0]["status"] == "0x0000"
    for line in lines:
        assert line["association_id"] == dimse[0]["association_id"]
        assert line["called_ae_title"] == "PACSD"
        assert line["peer"].startswith("127.0.0.1:")
    (closed,) = [line for line in lines if line["event"] == "association closed"]
    assert (closed["state"], closed["operations"]) == ("released", 1)
    assert (closed["rule"], closed["accepted_contexts"]) == ("accept-all", 1)


def test_association_log_lines_carry_their_context(
    pacsd_server: Callable[..., PacsdProcess],
) -> None:
    """Every line an association logs is a JSON line with its ID, AE titles and peer; at
    DEBUG the engine traces each PDU with that context too."""
    server = pacsd_server(logging={"level": "DEBUG"})
    assert echo(server.host, server.port, calling="CTXTEST")
    server.stop()
    records = [line for line in server.lines if line.get("calling_ae_title") == "CTXTEST"]
    events = {line["event"] for line in records}
    assert {"association accepted", "dimse", "association closed", "PDU received"} <= events
    assert all(line["peer"].startswith("127.0.0.1:") for line in records)
    assert len({line["association_id"] for line in records}) == 1


def test_pacsd_echo_command_reaches_the_server(server: PacsdProcess) -> None:
    """`pacsd echo` exits 0 against a running server and reports success."""
    result = pacsd_command("echo", "--host", server.host, "--port", str(server.port))
    assert result.returncode == 0, result.stderr
    assert "success (0x0000)" in result.stdout


def test_store_keeps_every_sop_class_and_syntax_byte_identical(
    archive_server: PacsdProcess, storage: ArchiveStorage, database_url: str, tmp_path: Path
) -> None:
    """Each instance is stored in the syntax it arrived in, data set bytes unchanged, indexed."""
    study = datagen.StudyContext()
    sources = []
    for number, (make, syntax) in enumerate(CASES, start=1):
        study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
        sources.append(
            datagen.write_part10(make(study, number), tmp_path / f"{number}.dcm", syntax)
        )
    server = archive_server
    results = store_files(server.host, server.port, sources, calling="MODALITY1")
    assert results == [(0x0000, "")] * len(sources)

    files = storage.files(server)
    rows = {row["sop_instance_uid"]: row for row in index_rows_checked(files, database_url)}
    assert len(rows) == len(sources)
    for source, (_, syntax) in zip(sources, CASES, strict=True):
        sent = dcmread(source, stop_before_pixels=True)
        row = rows[sent.SOPInstanceUID]
        stored = files.local(str(row["file_path"]))
        assert dataset_bytes(stored) == dataset_bytes(source), f"{syntax} changed in storage"
        meta = file_meta(stored)
        assert meta.TransferSyntaxUID == syntax
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.SourceApplicationEntityTitle == "MODALITY1"
        assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert_row_describes(row, sent, syntax, stored)


def index_rows_checked(files: StoredFiles, database_url: str) -> list[dict[str, object]]:
    """The index rows, after checking that they and the stored files (or objects) correspond
    one to one, checksums included (inspect_archive.assert_index_matches_files, any backend)."""
    rows = index_rows(database_url)
    indexed = {row["file_path"]: row["file_sha256"] for row in rows}
    assert len(indexed) == len(rows), "two index rows share a file"
    assert files.listing() == indexed
    return rows


def assert_row_describes(row: dict[str, object], sent: Dataset, syntax: str, stored: Path) -> None:
    """The index row holds the instance's attributes at every level."""
    assert row["patient_id"] == sent.PatientID
    assert row["patient_name"] == str(sent.PatientName)
    assert row["patient_birth_date"] == sent.PatientBirthDate
    assert row["patient_sex"] == sent.PatientSex
    assert row["study_instance_uid"] == sent.StudyInstanceUID
    assert row["study_date"] == sent.StudyDate
    assert row["study_time"] == sent.StudyTime
    assert row["accession_number"] == sent.AccessionNumber
    assert row["referring_physician_name"] == str(sent.ReferringPhysicianName)
    assert row["series_instance_uid"] == sent.SeriesInstanceUID
    assert row["modality"] == sent.Modality
    assert row["series_number"] == int(sent.SeriesNumber)
    assert row["body_part_examined"] == sent.BodyPartExamined
    assert row["sop_class_uid"] == sent.SOPClassUID
    assert row["instance_number"] == int(sent.InstanceNumber)
    assert row["transfer_syntax_uid"] == syntax
    assert row["file_size"] == stored.stat().st_size
    assert row["calling_ae_title"] == "MODALITY1"
    header = row["header"]
    assert isinstance(header, dict)
    assert header["00100010"]["Value"] == [{"Alphabetic": str(sent.PatientName)}]
    assert "7FE00010" not in header, "pixel data is bulk data, not header"
    assert "00420011" not in header, "an encapsulated document is bulk data, not header"
    modalities = str(row["modalities_in_study"]).split("\\")
    assert str(sent.Modality) in modalities


def test_modalities_in_study_lists_each_series_modality(
    archive_server: PacsdProcess, storage: ArchiveStorage, database_url: str, tmp_path: Path
) -> None:
    """ModalitiesInStudy collects the distinct modalities of the study's series."""
    study = datagen.StudyContext()
    ct = datagen.write_part10(datagen.ct_image(study, 1, 32), tmp_path / "ct.dcm")
    study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
    sr = datagen.write_part10(datagen.basic_text_sr(study, 2), tmp_path / "sr.dcm")
    server = archive_server
    assert store_files(server.host, server.port, [ct, sr]) == [(0, "")] * 2
    rows = index_rows_checked(storage.files(server), database_url)
    assert {row["modalities_in_study"] for row in rows} == {"CT\\SR"}


def test_logs_carry_no_patient_data(archive_server: PacsdProcess, tmp_path: Path) -> None:
    """With the default logging settings no patient name or ID reaches the log."""
    server = archive_server
    study = datagen.StudyContext(patient_id="SECRET-ID-4711", patient_name="Secretname^Anna")
    source = datagen.write_part10(datagen.ct_image(study, 1, 32), tmp_path / "ct.dcm")
    assert store_files(server.host, server.port, [source]) == [(0, "")]
    server.stop()
    assert server.events("dimse"), "the operation was logged"
    assert "SECRET-ID-4711" not in server.output()
    assert "Secretname" not in server.output()


@pytest.mark.parametrize("policy", ["keep-first", "overwrite", "reject"])
def test_duplicate_policy(
    pacsd_server: Callable[..., PacsdProcess],
    database_url: str,
    storage: ArchiveStorage,
    tmp_path: Path,
    policy: str,
) -> None:
    """A second instance with a stored SOP Instance UID follows the policy; files = index."""
    server = pacsd_server(database_url, storage={"duplicate_policy": policy, **storage.settings})
    first = datagen.ct_image(datagen.StudyContext(), 1, 32)
    second = first.copy()
    second.SeriesDescription = "resent with a change"
    first_path = datagen.write_part10(first, tmp_path / "first.dcm")
    second_path = datagen.write_part10(second, tmp_path / "second.dcm")
    assert store_files(server.host, server.port, [first_path]) == [(0, "")]
    status, comment = store_files(server.host, server.port, [second_path])[0]

    files = storage.files(server)
    rows = index_rows_checked(files, database_url)
    assert len(rows) == 1, "one SOP instance, one row, one file"
    kept = files.local(str(rows[0]["file_path"]))
    if policy == "reject":
        assert (status, comment) == (0x0111, "SOP Instance UID already stored")
    else:
        assert status == 0x0000
    expected = second_path if policy == "overwrite" else first_path
    assert dataset_bytes(kept) == dataset_bytes(expected)
    assert rows[0]["header"]["0008103E"]["Value"] == [str(dcmread(expected).SeriesDescription)]
