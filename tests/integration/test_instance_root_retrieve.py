"""Composite Instance Root Retrieve (PS3.4 Annex Y) and Retrieve Without Bulk Data (Annex Z)
against a real pacsd, driven by pynetdicom SCUs.

One server per backend holds a multi-frame US cine (native, and RLE compressed), a JPEG-LS
multi-frame image, a single-frame CT, a Basic Text SR, a 12-lead ECG waveform, an encapsulated
PDF and a JPEG multi-frame whose frames cannot be split or decoded. Expected pixels come from
the generated arrays, never from pacsd's code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import dcmread, read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)
from pynetdicom import AE, build_role
from pynetdicom.dsutils import split_dataset

from tests import datagen
from tests.compressed import encode_instance, image_dataset
from tests.conftest import _backends, index_url
from tests.harness import PacsdProcess, base_config
from tests.qr_scu import Received, collect, identifier, qr_association, storage_scp
from tests.scu import store_files

CIRR_GET, CIRR_MOVE = "1.2.840.10008.5.1.4.1.2.4.3", "1.2.840.10008.5.1.4.1.2.4.2"
WITHOUT_BULK_DATA_GET = "1.2.840.10008.5.1.4.1.2.5.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage
END = 0xFFFFFFFF


@dataclass(frozen=True)
class Stored:
    """One generated instance: its file, UIDs and (for images) its pixels."""

    path: Path
    uid: str
    pixels: np.ndarray | None = None


@dataclass
class Archive:
    """A running pacsd holding the instances, and the C-MOVE destination's inbox."""

    server: PacsdProcess
    items: dict[str, Stored]
    destination: Received

    def __getitem__(self, name: str) -> Stored:
        return self.items[name]


def _policies() -> list[dict[str, Any]]:
    return [
        {
            "name": "classic-models-only",
            "match": {"calling_ae": "NOCIRR"},
            "sop_classes": ["verification", "storage", "query-retrieve:find", STUDY_ROOT_GET],
            "peer_scp_role": ["storage"],
        },
        {
            "name": "accept-all",
            "sop_classes": ["verification", "storage", "query-retrieve"],
            "peer_scp_role": ["storage"],
        },
    ]


@pytest.fixture(scope="module", params=_backends())
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("instance-root")
    destination = Received()
    with index_url(request.param, root) as url, storage_scp("DEST", destination) as port:
        peers = [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]
        config = base_config(root, url, peers=peers, policies=_policies())
        server = PacsdProcess.from_config(root, config).start()
        try:
            items = _generated(root / "files")
            results = store_files(server.host, server.port, [i.path for i in items.values()])
            assert all(status == 0 for status, _comment in results), results
            yield Archive(server, items, destination)
        finally:
            server.stop()


def _generated(folder: Path) -> dict[str, Stored]:
    study = datagen.StudyContext(patient_id="PID-FRAMES", patient_name="Frames^Test")
    items: dict[str, Stored] = {}
    for name, syntax in (("us", ExplicitVRLittleEndian), ("us_rle", RLELossless)):
        ds = datagen.us_multiframe(study, frames=8)
        ds.FrameIncrementPointer = 0x00181063  # Frame Time (33.3 ms)
        pixels = np.frombuffer(ds.PixelData, np.uint8).reshape(8, 64, 64, 3).copy()
        path = datagen.write_part10(ds, folder / f"{name}.dcm", syntax)
        items[name] = Stored(path, str(ds.SOPInstanceUID), pixels)
    jls, pixels = image_dataset("multiframe", study)  # 3 frames, no frame times
    encode_instance(jls, JPEGLSLossless)
    items["jls"] = Stored(_saved(jls, folder / "jls.dcm"), str(jls.SOPInstanceUID), pixels)
    ct = datagen.ct_image(study, 1, size=16)
    items["ct"] = Stored(datagen.write_part10(ct, folder / "ct.dcm"), str(ct.SOPInstanceUID))
    for name, ds in (
        ("sr", datagen.basic_text_sr(study)),
        ("pdf", datagen.encapsulated_pdf(study)),
        ("ecg", _waveform(study)),
    ):
        items[name] = Stored(datagen.write_part10(ds, folder / f"{name}.dcm"), ds.SOPInstanceUID)
    junk = datagen.us_multiframe(study, frames=4)
    junk.PixelData = encapsulate([bytes([n]) * 100 for n in range(8)], has_bot=False)
    junk["PixelData"].VR = "OB"
    junk.file_meta = FileMetaDataset()
    junk.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    items["junk"] = Stored(_saved(junk, folder / "junk.dcm"), str(junk.SOPInstanceUID))
    return items


def _saved(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _waveform(study: datagen.StudyContext) -> Dataset:
    """A 12-lead ECG-like instance: one multiplex group of two channels."""
    ds = datagen.basic_text_sr(study)
    for keyword in ("ValueType", "ContinuityOfContent", "ConceptNameCodeSequence"):
        delattr(ds, keyword)
    del ds.ContentSequence
    ds.SOPClassUID, ds.Modality = ECG, "ECG"
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = 2, 500
    group.SamplingFrequency = 500
    group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 16, "SS"
    group.WaveformData = np.arange(1000, dtype="<i2").tobytes()
    ds.WaveformSequence = Sequence([group])
    return ds


# --- Helpers -----------------------------------------------------------------------------------


def get(
    archive: Archive,
    ds: Dataset,
    model: str = CIRR_GET,
    syntaxes: dict[str, list[str]] | None = None,
) -> tuple[Any, Received]:
    """One C-GET over a new association; the responses and what pacsd sent."""
    received = Received()
    with qr_association(
        archive.server,
        [model],
        store_handler=received.on_c_store,
        storage_syntaxes=syntaxes,
    ) as assoc:
        responses = collect(assoc.send_c_get(ds, model, msg_id=7))
    return responses, received


def move(archive: Archive, ds: Dataset) -> Any:
    archive.destination.datasets.clear()
    with qr_association(archive.server, [CIRR_MOVE]) as assoc:
        return collect(assoc.send_c_move(ds, "DEST", CIRR_MOVE, msg_id=8))


def frames(uid: str, **key: Any) -> Dataset:
    return identifier("FRAME", SOPInstanceUID=uid, **key)


def decoded(raw: bytes, syntax: str) -> Dataset:
    """A received data set, readable (pixel_array) in its transfer syntax."""
    uid = UID(syntax)
    ds = read_dataset(BytesIO(raw), is_implicit_VR=uid.is_implicit_VR, is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return ds


def stored_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (what a C-STORE carries)."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def only_new_instance(received: Received, source: Stored) -> tuple[Dataset, str]:
    (uid,) = received.datasets
    assert uid != source.uid
    raw, syntax = received.datasets[uid]
    return decoded(raw, syntax), syntax


def extraction_logs(archive: Archive) -> list[dict[str, Any]]:
    """pacsd's log lines of FRAME level retrieves, in order."""
    return [line for line in archive.server.events("dimse") if "frame_key" in line]


def next_extraction_log(archive: Archive, before: int) -> dict[str, Any]:
    """The log line of the FRAME level retrieve after the first `before` (bounded wait)."""
    deadline = time.monotonic() + 10
    while len(lines := extraction_logs(archive)) <= before:
        assert time.monotonic() < deadline, "no log line for the FRAME level retrieve"
        time.sleep(0.05)
    return lines[before]


def assert_extracted(new: Dataset, source: Stored, numbers: list[int], key: str) -> None:
    """The new instance: the source's frames `numbers`, its study and series, a new UID, the
    Frame Extraction Sequence naming the source and the key as requested."""
    original = dcmread(source.path)
    assert new.SOPClassUID == original.SOPClassUID
    assert new.SOPInstanceUID != source.uid
    assert new.StudyInstanceUID == original.StudyInstanceUID
    assert new.SeriesInstanceUID == original.SeriesInstanceUID
    assert new.NumberOfFrames == len(numbers)
    assert source.pixels is not None
    expected = source.pixels[[n - 1 for n in numbers]]
    assert np.array_equal(new.pixel_array.reshape(expected.shape), expected)
    (item,) = new.FrameExtractionSequence
    assert item.MultiFrameSourceSOPInstanceUID == source.uid
    assert key in item
    purposes = [
        i.PurposeOfReferenceCodeSequence[0].CodeValue for i in new.ContributingEquipmentSequence
    ]
    assert purposes == ["109105"]


# --- IMAGE level -------------------------------------------------------------------------------


def test_image_level_by_sop_instance_uid_alone_sends_the_stored_instances(
    archive: Archive,
) -> None:
    """Y.6.1.1.2: no Patient, Study or Series key; each instance byte for byte as stored."""
    wanted = [archive["ct"].uid, archive["us"].uid, archive["sr"].uid]
    responses, received = get(archive, identifier("IMAGE", SOPInstanceUID=wanted))
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == 3
    by_uid = {item.uid: item.path for item in archive.items.values()}
    for uid, (raw, syntax) in received.datasets.items():
        assert syntax == ExplicitVRLittleEndian
        assert raw == stored_bytes(by_uid[uid])
    assert set(received.datasets) == set(wanted)


def test_image_level_move_sends_the_stored_instance(archive: Archive) -> None:
    responses = move(archive, identifier("IMAGE", SOPInstanceUID=archive["ct"].uid))
    assert responses.final_status == 0x0000
    raw, _syntax = archive.destination.datasets[archive["ct"].uid]
    assert raw == stored_bytes(archive["ct"].path)


# --- FRAME level -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "numbers"),
    [
        ({"SimpleFrameList": [1, 3, 8]}, [1, 3, 8]),
        ({"CalculatedFrameList": [2, 9, 3]}, [2, 5, 8]),
        ({"CalculatedFrameList": [1, 2, 1, 6, END, 2]}, [1, 2, 6, 8]),
        ({"TimeRange": [0.03, 0.1]}, [2, 3, 4]),  # frames at 33.3, 66.6 and 99.9 ms
    ],
    ids=["simple", "calculated", "calculated to the end", "time range"],
)
def test_frame_level_get_sends_one_new_instance_of_the_frames(
    archive: Archive, key: dict[str, Any], numbers: list[int]
) -> None:
    source = archive["us"]
    responses, received = get(archive, frames(source.uid, **key))
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == 1
    new, syntax = only_new_instance(received, source)
    assert syntax == ExplicitVRLittleEndian
    assert_extracted(new, source, numbers, next(iter(key)))
    # The new instance was sent, not stored: pacsd does not know it.
    responses, received = get(archive, identifier("IMAGE", SOPInstanceUID=new.SOPInstanceUID))
    assert (responses.final_status, received.datasets) == (0x0000, {})


def test_compressed_frames_go_as_stored_when_the_receiver_takes_the_syntax(
    archive: Archive,
) -> None:
    source = archive["us_rle"]
    rle_first = {UltrasoundMultiFrameImageStorage: [RLELossless, ExplicitVRLittleEndian]}
    before = len(extraction_logs(archive))
    _responses, received = get(
        archive, frames(source.uid, SimpleFrameList=[2, 7]), syntaxes=rle_first
    )
    new, syntax = only_new_instance(received, source)
    assert syntax == RLELossless
    assert_extracted(new, source, [2, 7], "SimpleFrameList")
    line = next_extraction_log(archive, before)
    assert line["frames_compressed_as_stored"] is True
    assert (line["frames"], line["source_frames"], line["status"]) == (2, 8, "0x0000")
    assert "converted" not in line

    plain = {UltrasoundMultiFrameImageStorage: [ImplicitVRLittleEndian]}
    _responses, received = get(archive, frames(source.uid, SimpleFrameList=[2, 7]), syntaxes=plain)
    new, syntax = only_new_instance(received, source)
    assert syntax == ImplicitVRLittleEndian
    assert_extracted(new, source, [2, 7], "SimpleFrameList")
    assert next_extraction_log(archive, before + 1)["converted"] == {
        "RLELossless -> ImplicitVRLittleEndian": 1
    }


def test_jpeg_ls_frames_are_extracted_without_decoding(archive: Archive) -> None:
    source = archive["jls"]
    jls = {CTImageStorage: [JPEGLSLossless]}
    before = len(extraction_logs(archive))
    _responses, received = get(
        archive, frames(source.uid, CalculatedFrameList=[1, END, 2]), syntaxes=jls
    )
    new, syntax = only_new_instance(received, source)
    assert syntax == JPEGLSLossless
    assert_extracted(new, source, [1, 3], "CalculatedFrameList")
    assert next_extraction_log(archive, before)["frames_compressed_as_stored"] is True


def test_frame_level_move_sends_the_new_instance_to_the_destination(archive: Archive) -> None:
    source = archive["us"]
    responses = move(archive, frames(source.uid, TimeRange=[0.0, 0.04]))
    assert responses.final_status == 0x0000
    new, _syntax = only_new_instance(archive.destination, source)
    assert_extracted(new, source, [1, 2], "TimeRange")


# --- Statuses of PS3.4 Table Y.4-1 / Y.4-2 -----------------------------------------------------


def refusal(archive: Archive, name: str, **key: Any) -> tuple[int, str, Received]:
    responses, received = get(archive, frames(archive[name].uid, **key))
    final = responses.final
    assert "NumberOfCompletedSuboperations" not in final
    return responses.final_status, str(final.get("ErrorComment", "")), received


@pytest.mark.parametrize(
    ("name", "key", "status"),
    [
        ("us", {"SimpleFrameList": [9, 12]}, 0xAA00),
        ("us", {"CalculatedFrameList": [20, END, 1]}, 0xAA00),
        ("ct", {"SimpleFrameList": [1]}, 0xAA01),
        ("sr", {"SimpleFrameList": [1]}, 0xAA01),
        ("junk", {"SimpleFrameList": [1]}, 0xAA02),
        ("jls", {"TimeRange": [0.0, 1.0]}, 0xAA03),
        ("us", {}, 0xAA04),
        ("us", {"SimpleFrameList": [1], "TimeRange": [0.0, 1.0]}, 0xAA04),
        ("us", {"SimpleFrameList": [3, 2]}, 0xAA04),
        ("us", {"CalculatedFrameList": [1, 9, 0]}, 0xAA04),
        ("us", {"TimeRange": [1.0, 0.0]}, 0xAA04),
    ],
    ids=[
        "frames beyond the end", "sub-range beyond the end", "single-frame CT", "SR",
        "frames that cannot be split or decoded", "time range without frame times",
        "no frame key", "two frame keys", "decreasing list", "increment 0", "reversed range",
    ],
)  # fmt: skip
def test_frame_level_refusals(
    archive: Archive, name: str, key: dict[str, Any], status: int
) -> None:
    answered, comment, received = refusal(archive, name, **key)
    assert answered == status, comment
    assert comment
    assert not received.datasets


def test_invalid_requests_of_the_identifier(archive: Archive) -> None:
    two = [archive["us"].uid, archive["us_rle"].uid]
    responses, received = get(archive, identifier("FRAME", SOPInstanceUID=two, SimpleFrameList=[1]))
    assert responses.final_status == 0xAA04
    image = identifier("IMAGE", SOPInstanceUID=archive["us"].uid, SimpleFrameList=[1])
    responses, received = get(archive, image)
    assert responses.final_status == 0xAA04
    assert not received.datasets
    responses, _received = get(archive, identifier("FRAME", SimpleFrameList=[1]))
    assert responses.final_status == 0xA900
    responses, _received = get(archive, identifier("SERIES", SeriesInstanceUID="1.2.3"))
    assert responses.final_status == 0xA900


def test_move_refusal_opens_no_association_to_the_destination(archive: Archive) -> None:
    responses = move(archive, frames(archive["us"].uid, SimpleFrameList=[40]))
    assert responses.final_status == 0xAA00
    assert not archive.destination.datasets


def test_frames_of_an_unknown_instance_select_nothing(archive: Archive) -> None:
    responses, received = get(archive, frames("1.2.3.4.5", SimpleFrameList=[1]))
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == 0
    assert not received.datasets


# --- Without Bulk Data (Annex Z) ---------------------------------------------------------------


def without_bulk(archive: Archive, name: str) -> tuple[Dataset, Dataset, str]:
    """C-GET one instance without bulk data: (received, stored) data sets and the syntax."""
    item = archive[name]
    responses, received = get(
        archive, identifier("IMAGE", SOPInstanceUID=item.uid), model=WITHOUT_BULK_DATA_GET
    )
    assert responses.final_status == 0x0000
    raw, syntax = received.datasets[item.uid]
    return decoded(raw, syntax), dcmread(item.path), syntax


@pytest.mark.parametrize(
    ("name", "removed"),
    [
        ("us", "PixelData"),
        ("us_rle", "PixelData"),
        ("jls", "PixelData"),
        ("pdf", "EncapsulatedDocument"),
    ],
)
def test_without_bulk_data_leaves_out_the_bulk_data_and_nothing_else(
    archive: Archive, name: str, removed: str
) -> None:
    received, stored, _syntax = without_bulk(archive, name)
    assert removed not in received
    delattr(stored, removed)
    assert received == stored


def test_without_bulk_data_removes_waveform_data_inside_the_waveform_sequence(
    archive: Archive,
) -> None:
    received, stored, _syntax = without_bulk(archive, "ecg")
    (group,) = received.WaveformSequence
    assert "WaveformData" not in group
    assert group.NumberOfWaveformSamples == 500
    del stored.WaveformSequence[0].WaveformData
    assert received == stored


def test_without_bulk_data_sends_an_instance_without_any_as_stored(archive: Archive) -> None:
    """Z.1.4 note: nothing to leave out, the instance is identical to the original."""
    item = archive["sr"]
    _responses, received = get(
        archive, identifier("IMAGE", SOPInstanceUID=item.uid), model=WITHOUT_BULK_DATA_GET
    )
    raw, syntax = received.datasets[item.uid]
    assert (raw, syntax) == (stored_bytes(item.path), ExplicitVRLittleEndian)


def test_without_bulk_data_has_no_frame_level(archive: Archive) -> None:
    ds = frames(archive["us"].uid, SimpleFrameList=[1])
    responses, received = get(archive, ds, model=WITHOUT_BULK_DATA_GET)
    assert responses.final_status == 0xA900
    assert not received.datasets


# --- Policy ------------------------------------------------------------------------------------


def test_a_rule_that_does_not_grant_these_classes_rejects_them(archive: Archive) -> None:
    ae = AE(ae_title="NOCIRR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (CIRR_GET, CIRR_MOVE, WITHOUT_BULK_DATA_GET, STUDY_ROOT_GET):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(archive.server.host, archive.server.port, ae_title="PACSD", ext_neg=roles)
    assert assoc.is_established
    try:
        rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert rejected == {CIRR_GET, CIRR_MOVE, WITHOUT_BULK_DATA_GET}
    assert STUDY_ROOT_GET in accepted
