"""Bad input gets a precise status, nothing is stored, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import BasicTextSRStorage, CTImageStorage, MRImageStorage

from pacsd.dicom.part10 import encode_file_meta
from tests import datagen
from tests.harness import VERIFICATION, PacsdProcess, echo
from tests.inspect_archive import dataset_bytes, index_rows, stored_files, work_files
from tests.scu import associate, settled, store_files

ServerFactory = Callable[..., PacsdProcess]


def raw_part10(
    path: Path, sop_class: str, sop_instance: str, syntax: str, encoded_dataset: bytes
) -> Path:
    """A Part 10 file whose meta says what we want, whatever its data set contains."""
    path.write_bytes(encode_file_meta(sop_class, sop_instance, syntax, "") + encoded_dataset)
    return path


def sop_instance_uid(path: Path) -> str:
    """The SOP Instance UID inside a Part 10 file."""
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def assert_nothing_stored(server: PacsdProcess, database_url: str) -> None:
    """No index row, no instance file, no leftover work file."""
    assert index_rows(database_url) == []
    assert stored_files(server.storage_root) == {}
    assert [p for p in work_files(server.storage_root) if p.suffix == ".part"] == []


def assert_still_serving(server: PacsdProcess, tmp_path: Path) -> None:
    """C-ECHO works and a good instance is stored after the refusal."""
    assert echo(server.host, server.port)
    good = datagen.write_part10(
        datagen.ct_image(datagen.StudyContext(), 1, 16), tmp_path / "good.dcm"
    )
    assert store_files(server.host, server.port, [good]) == [(0x0000, "")]


@pytest.fixture
def ct_source(tmp_path: Path) -> Path:
    """A small, valid CT file."""
    return datagen.write_part10(
        datagen.ct_image(datagen.StudyContext(), 1, 32), tmp_path / "ct.dcm"
    )


def test_sop_instance_uid_mismatch_is_refused(
    server: PacsdProcess, database_url: str, ct_source: Path, tmp_path: Path
) -> None:
    """Data set SOP Instance UID != Affected SOP Instance UID: 0xA900, nothing stored."""
    path = raw_part10(
        tmp_path / "x.dcm",
        CTImageStorage,
        generate_uid(),
        ExplicitVRLittleEndian,
        dataset_bytes(ct_source),
    )
    status, comment = store_files(server.host, server.port, [path])[0]
    assert status == 0xA900
    assert "SOP Instance UID" in comment
    assert_nothing_stored(server, database_url)
    assert_still_serving(server, tmp_path)


def test_sop_class_uid_mismatch_is_refused(
    server: PacsdProcess, database_url: str, ct_source: Path, tmp_path: Path
) -> None:
    """A CT data set sent as MR Image Storage: 0xA900 (data set does not match SOP class)."""
    uid = sop_instance_uid(ct_source)
    path = raw_part10(
        tmp_path / "x.dcm", MRImageStorage, uid, ExplicitVRLittleEndian, dataset_bytes(ct_source)
    )
    status, comment = store_files(server.host, server.port, [path])[0]
    assert status == 0xA900
    assert "SOP Class UID" in comment
    assert_nothing_stored(server, database_url)


@pytest.mark.parametrize(
    ("case", "cut"),
    [
        ("pixel data shorter than declared", -1000),
        ("ends inside an element header", 200),
    ],
)
def test_truncated_data_set_is_refused(
    server: PacsdProcess,
    database_url: str,
    ct_source: Path,
    tmp_path: Path,
    case: str,
    cut: int,
) -> None:
    """A data set whose elements run past its end: 0xC000 (cannot understand), nothing kept."""
    encoded = dataset_bytes(ct_source)
    uid = sop_instance_uid(ct_source)
    # Find a cut inside an element header: just after a tag, before its length.
    data = encoded[:cut] if cut < 0 else encoded[: _inside_header(encoded, cut)]
    path = raw_part10(tmp_path / "x.dcm", CTImageStorage, uid, ExplicitVRLittleEndian, data)
    status, comment = store_files(server.host, server.port, [path])[0]
    assert status == 0xC000, case
    assert comment
    assert_nothing_stored(server, database_url)
    assert_still_serving(server, tmp_path)


def _inside_header(encoded: bytes, minimum: int) -> int:
    """An offset >= minimum that falls 6 bytes into an explicit VR element header."""
    position = 0
    while position < minimum:
        vr = encoded[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            length = int.from_bytes(encoded[position + 8 : position + 12], "little")
            position += 12 + length
        else:
            position += 8 + int.from_bytes(encoded[position + 6 : position + 8], "little")
    return position + 6


def test_sequence_without_delimiter_is_refused(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """An undefined-length sequence cut before its delimiters: 0xC000, nothing stored."""
    source = datagen.write_part10(
        datagen.basic_text_sr(datagen.StudyContext(), 1),
        tmp_path / "sr.dcm",
        ImplicitVRLittleEndian,
    )
    encoded = dataset_bytes(source)
    start = encoded.index(b"\x40\x00\x30\xa7")  # ContentSequence (0040,A730)
    uid = sop_instance_uid(source)
    path = raw_part10(
        tmp_path / "x.dcm",
        BasicTextSRStorage,
        uid,
        ImplicitVRLittleEndian,
        encoded[: start + 40],
    )
    status, _ = store_files(server.host, server.port, [path])[0]
    assert status == 0xC000
    assert_nothing_stored(server, database_url)


def test_data_set_without_study_uid_is_refused(
    server: PacsdProcess, database_url: str, tmp_path: Path
) -> None:
    """An instance pacsd cannot file (no Study Instance UID): 0xA900, nothing stored."""
    dataset = datagen.ct_image(datagen.StudyContext(), 1, 16)
    del dataset.StudyInstanceUID
    path = datagen.write_part10(dataset, tmp_path / "x.dcm")
    status, comment = store_files(server.host, server.port, [path])[0]
    assert (status, comment) == (0xA900, "data set has no StudyInstanceUID")
    assert_nothing_stored(server, database_url)


def test_low_disk_space_refuses_with_out_of_resources(
    pacsd_server: ServerFactory, database_url: str, ct_source: Path, tmp_path: Path
) -> None:
    """Below the free-space minimum C-STORE answers 0xA700 and writes nothing."""
    server = pacsd_server(database_url, storage={"min_free_space": "1PB"})
    status, comment = store_files(server.host, server.port, [ct_source])[0]
    assert status == 0xA700
    assert "below the minimum" in comment
    assert_nothing_stored(server, database_url)
    assert echo(server.host, server.port)


def test_unknown_sop_class_is_rejected_at_negotiation(server: PacsdProcess) -> None:
    """A context for a SOP class pacsd does not serve is rejected; the association lives. (A
    UID outside the DICOM root is a private storage class, which the default accepts.)"""
    unknown = "1.2.840.10008.9.9.9"
    contexts = [(unknown, ExplicitVRLittleEndian), (VERIFICATION, ImplicitVRLittleEndian)]
    with associate(server.host, server.port, contexts) as assoc:
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert rejected == {unknown: 0x03}  # PS3.8 9.3.3.2: abstract syntax not supported
        assert int(assoc.send_c_echo().Status) == 0x0000


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ([{"name": "closed", "action": "reject"}], (1, 1, 1)),
        ([], (1, 1, 3)),
    ],
)
def test_policy_rejection_uses_standard_codes(
    pacsd_server: ServerFactory,
    database_url: str,
    policies: list[dict[str, str]],
    expected: tuple[int, int, int],
) -> None:
    """A rejecting rule, or no rule at all, answers A-ASSOCIATE-RJ with the right codes."""
    server = pacsd_server(database_url, policies=policies, ready_by_echo=False)
    ae = AE(ae_title="OUTSIDER")
    ae.add_requested_context(VERIFICATION)
    assoc = settled(ae.associate(server.host, server.port, ae_title="PACSD"))
    assert assoc.is_rejected
    answer = assoc.acceptor.primitive
    assert (answer.result, answer.result_source, answer.diagnostic) == expected
    server.stop()
    rejected = server.events("association rejected")
    assert [line["calling_ae_title"] for line in rejected] == ["OUTSIDER"]
