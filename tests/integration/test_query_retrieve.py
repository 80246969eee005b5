"""C-FIND, C-GET, C-MOVE and C-CANCEL against a real pacsd, driven by pynetdicom SCUs.

One server per backend holds the archive of tests/qr_archive.py plus a bulk series for the
cancel tests; expected results are computed from the generated entries, never by pacsd's code.
C-MOVE destinations are pynetdicom storage SCPs in this process, in pacsd's peer table.

The tests that read stored instances (C-GET, C-MOVE: `@every_storage`) also run on an archive
on S3 (SQLite index, a SeaweedFS for the module); C-FIND, C-CANCEL of a C-FIND, policy
refusals and unreachable or unknown destinations read the index alone and run on the
filesystem archives only.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
)
from pynetdicom.dsutils import split_dataset
from sqlalchemy.engine import make_url

from tests import datagen, qr_archive
from tests.conftest import POSTGRES_ENV, _backends, archive_storage, index_url, needs_weed
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, base_config, descriptor_target, echo
from tests.qr_archive import Entry
from tests.qr_scu import (
    FIND,
    GET,
    MOVE,
    Received,
    collect,
    context_id,
    identifier,
    qr_association,
    storage_scp,
)
from tests.scu import store_files

BULK_COUNT = 250  # long enough a stream for a C-CANCEL to arrive mid-way
CANCEL_ATTEMPTS = 20  # a busy machine may let pacsd send all 250 matches first
S3_ARCHIVE = "sqlite-s3"  # the `qr` parameter of the archive on S3
# `qr`'s parameters for a test that reads stored instances: every index backend's archive on
# the filesystem, and one on S3 (the index backend does not change how files are read).
every_storage = pytest.mark.parametrize(
    "qr", [*_backends(), pytest.param(S3_ARCHIVE, marks=needs_weed)], indirect=True
)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Destination:
    """The DEST storage SCP's behaviour, changed by each test."""

    received: Received = field(default_factory=Received)
    fail_sop_class: str | None = None
    delay: float = 0.0

    def status_of(self, event: Any) -> int:
        failing = str(event.request.AffectedSOPClassUID) == self.fail_sop_class
        return 0xA700 if failing else 0x0000


@dataclass
class QRServer:
    """A running pacsd holding the archive, and what the tests need around it."""

    server: PacsdProcess
    entries: list[Entry]
    bulk: list[str]  # SOP Instance UIDs of the bulk series
    bulk_series: str
    destination: Destination
    compressed: tuple[str, str, np.ndarray]  # (study UID, SOP Instance UID, pixels)
    compressed_path: Path


def _policies() -> list[dict[str, Any]]:
    everything = ["verification", "storage", "query-retrieve"]
    return [
        {
            "name": "own-destination-only",
            "match": {"calling_ae": "SELFONLY"},
            "sop_classes": everything,
            "move_destinations": ["$calling"],
        },
        {
            "name": "no-get",
            "match": {"calling_ae": "NOGET"},
            "sop_classes": everything,
            "operations": ["echo", "find", "move"],
        },
        {"name": "accept-all", "sop_classes": everything, "peer_scp_role": ["storage"]},
    ]


@pytest.fixture(scope="module", params=_backends())
def qr(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QRServer]:
    """The archive on an index backend ("sqlite", "postgresql") on the filesystem, or (for
    `@every_storage` tests) on S3 ("sqlite-s3")."""
    root = tmp_path_factory.mktemp("qr-server")
    destination = Destination()
    index, _, backend = str(request.param).partition("-")
    storage = archive_storage(backend or "filesystem", request, root / "fetched")

    def status_of(event: Any) -> int:
        return destination.status_of(event)

    with (
        index_url(index, root) as url,
        storage_scp("DEST", destination.received, status_of) as port,
    ):
        peers = [
            {"ae_title": "DEST", "host": "127.0.0.1", "port": port},
            {"ae_title": "SELFONLY", "host": "127.0.0.1", "port": port},
            {"ae_title": "DOWN", "host": "127.0.0.1", "port": _closed_port()},
        ]
        config = base_config(root, url, peers=peers, policies=_policies(), storage=storage.settings)
        server = PacsdProcess.from_config(root, config).start()
        try:
            yield _populated(server, root, destination)
        finally:
            server.stop()


def _populated(server: PacsdProcess, root: Path, destination: Destination) -> QRServer:
    entries = qr_archive.build(root / "files")
    bulk_study = datagen.StudyContext(patient_id="PID-BULK", patient_name="Bulk^Series")
    bulk_paths = list(datagen.ct_series(root / "bulk", BULK_COUNT, size=8, study=bulk_study))
    compressed_study = datagen.StudyContext(patient_id="PID-RLE", patient_name="Rle^Pixels")
    compressed_ds = datagen.ct_image(compressed_study, 1, size=32)
    pixels = np.frombuffer(compressed_ds.PixelData, dtype=np.uint16).reshape(32, 32).copy()
    compressed_path = datagen.write_part10(compressed_ds, root / "rle.dcm", RLELossless)
    paths = [e.path for e in entries] + bulk_paths + [compressed_path]
    results = store_files(server.host, server.port, paths)
    assert all(status == 0 for status, _comment in results), results
    bulk = [str(split_dataset(path)[0].MediaStorageSOPInstanceUID) for path in bulk_paths]
    compressed = (
        compressed_study.study_instance_uid,
        str(compressed_ds.SOPInstanceUID),
        pixels,
    )
    series = bulk_study.series_instance_uid
    return QRServer(server, entries, bulk, series, destination, compressed, compressed_path)


def find(qr: QRServer, model: str, ds: Dataset, calling: str = "QRSCU") -> Any:
    with qr_association(qr.server, [FIND[model]], calling=calling) as assoc:
        return collect(assoc.send_c_find(ds, FIND[model]))


def in_study(qr: QRServer, study_uid: str) -> list[Entry]:
    return [e for e in qr.entries if e.study_uid == study_uid]


def studies(qr: QRServer, keep: Any) -> set[str]:
    return {e.study_uid for e in qr.entries if keep(e)}


# C-FIND ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["P", "O"])
def test_patient_level(qr: QRServer, model: str) -> None:
    found = find(qr, model, identifier("PATIENT", PatientID="", PatientName="Doe*"))
    assert found.final_status == 0x0000
    assert found.values("PatientID") == {"PID-1"}


@pytest.mark.parametrize("model", ["P", "S", "O"])
def test_study_level_in_every_model(qr: QRServer, model: str) -> None:
    keys: dict[str, Any] = {"StudyInstanceUID": "", "StudyDate": "20240101-20240104"}
    if model in "PO":
        keys["PatientID"] = "PID-1"
    found = find(qr, model, identifier("STUDY", **keys))
    assert found.final_status == 0x0000
    wanted = studies(
        qr,
        lambda e: (
            "20240101" <= e.study_date <= "20240104" and (model == "S" or e.patient_id == "PID-1")
        ),
    )
    assert found.values("StudyInstanceUID") == wanted
    assert all(ident.QueryRetrieveLevel == "STUDY" for ident in found.pending())


@pytest.mark.parametrize("model", ["P", "S"])
def test_series_and_image_levels(qr: QRServer, model: str) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    upper: dict[str, Any] = {"StudyInstanceUID": entry.study_uid}
    if model == "P":
        upper["PatientID"] = entry.patient_id
    series = find(qr, model, identifier("SERIES", SeriesInstanceUID="", Modality="CT", **upper))
    assert series.values("SeriesInstanceUID") == {
        e.series_uid for e in qr.entries if e.study_uid == entry.study_uid and e.modality == "CT"
    }
    [series_uid] = series.values("SeriesInstanceUID")
    images = find(
        qr, model, identifier("IMAGE", SOPInstanceUID="", SeriesInstanceUID=series_uid, **upper)
    )
    assert images.values("SOPInstanceUID") == {
        e.sop_instance_uid for e in qr.entries if e.series_uid == series_uid
    }


def test_every_requested_key_is_returned(qr: QRServer) -> None:
    found = find(
        qr,
        "S",
        identifier(
            "STUDY",
            AccessionNumber="ACC-101",
            StudyInstanceUID="",
            PatientName="",
            ReferringPhysicianName="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedInstances="",
            NumberOfStudyRelatedSeries="",
            RetrieveAETitle="",
            InstitutionName="",
            SpecificCharacterSet="ISO_IR 100",
        ),
    )
    [response] = found.pending()
    assert response.PatientName == "Doe^Jane"
    assert response.ReferringPhysicianName == "Ref^Doc"
    assert list(response.ModalitiesInStudy) == ["CT", "MR"]
    assert response.NumberOfStudyRelatedInstances == 4
    assert response.NumberOfStudyRelatedSeries == 2
    assert response.RetrieveAETitle == "PACSD"
    assert "InstitutionName" in response
    assert response.SpecificCharacterSet == "ISO_IR 100"


def test_non_ascii_names_in_either_character_set(qr: QRServer) -> None:
    for charset in ("ISO_IR 100", "ISO_IR 192"):
        found = find(
            qr,
            "P",
            identifier(
                "PATIENT", SpecificCharacterSet=charset, PatientName="Müller*", PatientID=""
            ),
        )
        assert found.values("PatientID") == {"PID-3", "PID-4"}
        assert {str(i.PatientName) for i in found.pending()} == {"Müller^Jürgen", "Müller^Anna"}


@pytest.mark.parametrize(
    ("model", "level", "keys", "comment"),
    [
        ("S", "PATIENT", {"PatientID": ""}, "not in the Study Root model"),
        ("O", "SERIES", {"StudyInstanceUID": "1.2"}, "not in the Patient/Study Only"),
        ("P", "STUDY", {"StudyInstanceUID": ""}, "PatientID needs one value"),
        ("S", "IMAGE", {"StudyInstanceUID": "1.2"}, "SeriesInstanceUID needs one value"),
        ("S", "", {"StudyInstanceUID": ""}, "Query/Retrieve Level missing"),
    ],
)
def test_wrong_level_or_missing_unique_keys_fail_with_a900(
    qr: QRServer, model: str, level: str, keys: dict[str, Any], comment: str
) -> None:
    ds = identifier(level, **keys)
    if not level:
        del ds.QueryRetrieveLevel
    found = find(qr, model, ds)
    assert found.final_status == 0xA900
    assert comment in str(found.final.get("ErrorComment", ""))
    assert not found.pending()


def test_keys_below_the_level_answer_ff01(qr: QRServer) -> None:
    found = find(qr, "S", identifier("STUDY", AccessionNumber="ACC-101", SOPInstanceUID=""))
    assert [int(s.Status) for s in found.statuses] == [0xFF01, 0x0000]


def test_more_matches_than_the_limit(qr: QRServer, pacsd_server: Any, tmp_path: Path) -> None:
    server = pacsd_server(query={"max_results": 2})
    store_files(server.host, server.port, [e.path for e in qr.entries[:5]])
    with qr_association(server, [FIND["S"]]) as assoc:
        first = qr.entries[0]
        keys = identifier(
            "IMAGE",
            StudyInstanceUID=first.study_uid,
            SeriesInstanceUID=first.series_uid,
            SOPInstanceUID="",
        )
        found = collect(assoc.send_c_find(keys, FIND["S"]))
    assert found.final_status == 0xA700
    assert "narrow the query" in str(found.final.ErrorComment)
    assert len(found.pending()) == 2


def test_c_cancel_stops_a_find(qr: QRServer) -> None:
    keys = identifier(
        "IMAGE",
        StudyInstanceUID=_bulk_study(qr),
        SeriesInstanceUID=qr.bulk_series,
        SOPInstanceUID="",
    )
    with qr_association(qr.server, [FIND["S"]]) as assoc:
        cid = context_id(assoc, FIND["S"])

        def cancel(count: int) -> None:
            if count == 1:
                assoc.send_c_cancel(7, cid)

        # After the first response, as DCMTK's `findscu --cancel 1` does: pynetdicom drops a
        # C-CANCEL that arrives before the SCP has started on the request. A busy machine
        # may let pacsd send every match before the C-CANCEL arrives (then Success, which is
        # right too): a few attempts, one of which must be cut short.
        outcomes = []
        for _attempt in range(CANCEL_ATTEMPTS):
            found = collect(assoc.send_c_find(keys, FIND["S"], msg_id=7), cancel)
            outcomes.append((found.final_status, len(found.pending())))
            assert outcomes[-1] in ((0xFE00, outcomes[-1][1]), (0x0000, BULK_COUNT)), outcomes
            if found.final_status == 0xFE00:
                break
        assert outcomes[-1][0] == 0xFE00, outcomes
        assert outcomes[-1][1] < BULK_COUNT, outcomes
        again = collect(assoc.send_c_find(keys, FIND["S"], msg_id=8))  # the association goes on
        assert len(again.pending()) == BULK_COUNT


def _bulk_study(qr: QRServer) -> str:
    found = find(qr, "S", identifier("STUDY", PatientID="PID-BULK", StudyInstanceUID=""))
    [uid] = found.values("StudyInstanceUID")
    return uid


# C-GET -----------------------------------------------------------------------------------------


def original_dataset(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (what a C-STORE carries)."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def get(
    qr: QRServer, model: str, ds: Dataset, syntaxes: dict[str, list[str]] | None = None,
    calling: str = "QRSCU", cancel_after: int | None = None, delay: float = 0.0,
) -> tuple[Any, Received]:  # fmt: skip
    received = Received()
    with qr_association(
        qr.server,
        [GET[model]],
        calling=calling,
        store_handler=lambda event: received.on_c_store(event, delay=delay),
        storage_syntaxes=syntaxes,
    ) as assoc:
        cid = context_id(assoc, GET[model])

        def cancel(count: int) -> None:
            if cancel_after is not None and count == cancel_after:
                assoc.send_c_cancel(9, cid)

        responses = collect(assoc.send_c_get(ds, GET[model], msg_id=9), cancel)
    return responses, received


def assert_identical(qr: QRServer, received: Received, uids: set[str]) -> None:
    assert set(received.datasets) == uids
    paths = {e.sop_instance_uid: e.path for e in qr.entries}
    for uid, (raw, syntax) in received.datasets.items():
        assert syntax == ExplicitVRLittleEndian
        assert raw == original_dataset(paths[uid]), f"{uid} differs from what was stored"


def long_uid_list(wanted: list[str]) -> list[str]:
    """`wanted` among unknown UIDs, > 64 kB in all: Explicit VR can then only encode it as UN."""
    unknown = [f"{TEST_UID_ROOT}8.{number}.{'1' * 28}" for number in range(1, 1300)]
    uids = unknown[:650] + wanted + unknown[650:]
    assert len("\\".join(uids)) > 0xFFFF
    return uids


@every_storage
@pytest.mark.filterwarnings("ignore:The value for the data element")  # pydicom: UI -> UN
def test_a_uid_list_longer_than_64_kb_still_matches(qr: QRServer) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    series = sorted(e.sop_instance_uid for e in qr.entries if e.series_uid == entry.series_uid)
    keys = identifier(
        "IMAGE",
        StudyInstanceUID=entry.study_uid,
        SeriesInstanceUID=entry.series_uid,
        SOPInstanceUID=long_uid_list(series[:2]),
    )
    found = find(qr, "S", keys)
    assert found.final_status == 0x0000
    assert found.values("SOPInstanceUID") == set(series[:2])
    responses, received = get(qr, "S", keys)
    assert responses.final_status == 0x0000
    assert_identical(qr, received, set(series[:2]))


@every_storage
@pytest.mark.parametrize("model", ["P", "S"])
def test_get_study_series_and_image_levels(qr: QRServer, model: str) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    upper = {"PatientID": entry.patient_id} if model == "P" else {}
    in_study = {e.sop_instance_uid for e in qr.entries if e.study_uid == entry.study_uid}
    study = identifier("STUDY", StudyInstanceUID=entry.study_uid, **upper)
    responses, received = get(qr, model, study)
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == len(in_study)
    remaining = [int(s.NumberOfRemainingSuboperations) for s in responses.statuses[:-1]]
    assert remaining == list(range(len(in_study) - 1, -1, -1))
    assert_identical(qr, received, in_study)

    series = {e.sop_instance_uid for e in qr.entries if e.series_uid == entry.series_uid}
    _responses, received = get(
        qr, model, identifier("SERIES", SeriesInstanceUID=entry.series_uid, **upper)
    )
    assert_identical(qr, received, series)

    two = sorted(series)[:2]
    _responses, received = get(qr, model, identifier("IMAGE", SOPInstanceUID=two, **upper))
    assert_identical(qr, received, set(two))


@every_storage
def test_get_of_several_studies_by_uid_list(qr: QRServer) -> None:
    uids = sorted({e.study_uid for e in qr.entries if e.patient_id in ("PID-2", "PID-3")})
    _responses, received = get(qr, "S", identifier("STUDY", StudyInstanceUID=uids))
    assert_identical(qr, received, {e.sop_instance_uid for e in qr.entries if e.study_uid in uids})


@every_storage
def test_compressed_instance_is_decompressed_for_a_peer_that_wants_uncompressed(
    qr: QRServer,
) -> None:
    study, sop_instance, pixels = qr.compressed
    only_plain = {CTImageStorage: [ExplicitVRLittleEndian]}
    responses, received = get(qr, "S", identifier("STUDY", StudyInstanceUID=study), only_plain)
    assert responses.final_status == 0x0000
    raw, syntax = received.datasets[sop_instance]
    assert syntax == ExplicitVRLittleEndian
    dataset = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    dataset.file_meta = Dataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert np.array_equal(dataset.pixel_array, pixels)

    only_rle = {CTImageStorage: [RLELossless]}
    _responses, received = get(qr, "S", identifier("STUDY", StudyInstanceUID=study), only_rle)
    raw, syntax = received.datasets[sop_instance]
    assert syntax == RLELossless
    assert raw == original_dataset(qr.compressed_path)  # the stored bytes, untouched


@every_storage
def test_sub_operations_that_cannot_be_converted_fail_and_the_rest_go_on(qr: QRServer) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    syntaxes = {CTImageStorage: [JPEGBaseline8Bit], MRImageStorage: [ExplicitVRLittleEndian]}
    responses, received = get(
        qr, "S", identifier("STUDY", StudyInstanceUID=entry.study_uid), syntaxes
    )
    cts = {e.sop_instance_uid for e in in_study(qr, entry.study_uid) if e.modality == "CT"}
    assert responses.final_status == 0xB000
    assert int(responses.final.NumberOfFailedSuboperations) == len(cts)
    assert int(responses.final.NumberOfCompletedSuboperations) == 1
    failed = responses.identifiers[-1].FailedSOPInstanceUIDList
    assert set([failed] if isinstance(failed, str) else failed) == cts
    assert len(received.datasets) == 1


@every_storage
def test_c_cancel_stops_a_get_after_the_current_sub_operation(qr: QRServer) -> None:
    responses, received = get(
        qr,
        "S",
        identifier("SERIES", SeriesInstanceUID=qr.bulk_series),
        cancel_after=1,
        delay=0.02,
    )
    final = responses.final
    assert responses.final_status == 0xFE00
    completed = int(final.NumberOfCompletedSuboperations)
    assert 1 <= completed < BULK_COUNT
    assert int(final.NumberOfRemainingSuboperations) == BULK_COUNT - completed
    assert len(received.datasets) == completed


def test_a_get_of_several_batches_answers_pending_after_each_sub_operation(qr: QRServer) -> None:
    """250 instances go in batches (services/retrieve._Batch): still one Pending response per
    sub-operation, its counts in step, and every instance received."""
    responses, received = get(qr, "S", identifier("SERIES", SeriesInstanceUID=qr.bulk_series))
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == BULK_COUNT
    pending = responses.statuses[:-1]
    assert [int(s.NumberOfRemainingSuboperations) for s in pending] == list(
        range(BULK_COUNT - 1, -1, -1)
    )
    assert [int(s.NumberOfCompletedSuboperations) for s in pending] == list(
        range(1, BULK_COUNT + 1)
    )
    assert sorted(received.datasets) == sorted(qr.bulk)


def test_get_refused_by_policy(qr: QRServer) -> None:
    """The no-get rule's operations leave out get: 0x0124 Not Authorized, nothing sent."""
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    responses, received = get(qr, "S", study, calling="NOGET")
    assert responses.final_status == 0x0124
    assert "operation get is not allowed" in str(responses.final.ErrorComment)
    assert not received.datasets


# C-MOVE ----------------------------------------------------------------------------------------


def move(
    qr: QRServer, model: str, ds: Dataset, destination: str = "DEST",
    calling: str = "QRSCU", cancel_after: int | None = None,
) -> Any:  # fmt: skip
    with qr_association(qr.server, [MOVE[model]], calling=calling) as assoc:
        cid = context_id(assoc, MOVE[model])

        def cancel(count: int) -> None:
            if cancel_after is not None and count == cancel_after:
                assoc.send_c_cancel(11, cid)

        return collect(assoc.send_c_move(ds, destination, MOVE[model], msg_id=11), cancel)


@pytest.fixture
def destination(qr: QRServer) -> Iterator[Destination]:
    qr.destination.received.datasets.clear()
    yield qr.destination
    qr.destination.fail_sop_class = None
    qr.destination.delay = 0.0


@every_storage
@pytest.mark.parametrize("model", ["P", "S"])
def test_move_study_series_image(qr: QRServer, destination: Destination, model: str) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    upper = {"PatientID": entry.patient_id} if model == "P" else {}
    in_study = {e.sop_instance_uid for e in qr.entries if e.study_uid == entry.study_uid}
    responses = move(qr, model, identifier("STUDY", StudyInstanceUID=entry.study_uid, **upper))
    assert responses.final_status == 0x0000
    assert int(responses.final.NumberOfCompletedSuboperations) == len(in_study)
    assert_identical(qr, destination.received, in_study)

    destination.received.datasets.clear()
    image = [entry.sop_instance_uid]
    responses = move(qr, model, identifier("IMAGE", SOPInstanceUID=image, **upper))
    assert_identical(qr, destination.received, set(image))


@every_storage
def test_move_by_patient_in_patient_root(qr: QRServer, destination: Destination) -> None:
    responses = move(qr, "P", identifier("PATIENT", PatientID="PID-2"))
    assert responses.final_status == 0x0000
    assert_identical(
        qr,
        destination.received,
        {e.sop_instance_uid for e in qr.entries if e.patient_id == "PID-2"},
    )


@every_storage
def test_move_with_failures_lists_them(qr: QRServer, destination: Destination) -> None:
    entry = next(e for e in qr.entries if e.accession == "ACC-101")
    destination.fail_sop_class = MRImageStorage
    responses = move(qr, "S", identifier("STUDY", StudyInstanceUID=entry.study_uid))
    assert responses.final_status == 0xB000
    mr = {e.sop_instance_uid for e in in_study(qr, entry.study_uid) if e.modality == "MR"}
    failed = responses.identifiers[-1].FailedSOPInstanceUIDList
    assert set([failed] if isinstance(failed, str) else failed) == mr
    assert int(responses.final.NumberOfFailedSuboperations) == 1
    assert int(responses.final.NumberOfCompletedSuboperations) == 3

    smith = next(e for e in qr.entries if e.patient_id == "PID-2")  # MR only
    responses = move(qr, "S", identifier("STUDY", StudyInstanceUID=smith.study_uid))
    assert responses.final_status == 0xA702


def test_unknown_destination(qr: QRServer, destination: Destination) -> None:
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    responses = move(qr, "S", study, "NOBODY")
    assert responses.final_status == 0xA801
    assert not destination.received.datasets


def test_destination_not_allowed_by_policy(qr: QRServer, destination: Destination) -> None:
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    refused = move(qr, "S", study, "DEST", calling="SELFONLY")
    assert refused.final_status == 0xA801
    assert not destination.received.datasets
    qr.server.wait_for("operation refused by policy")
    allowed = move(qr, "S", study, "SELFONLY", calling="SELFONLY")  # $calling
    assert allowed.final_status == 0x0000


def test_destination_that_is_down(qr: QRServer, destination: Destination) -> None:
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    responses = move(qr, "S", study, "DOWN")
    assert responses.final_status == 0xA801
    assert find(qr, "S", identifier("STUDY", PatientID="PID-2", StudyInstanceUID="")).pending()


@every_storage
def test_c_cancel_stops_a_move_and_releases_the_sub_association(
    qr: QRServer, destination: Destination
) -> None:
    destination.delay = 0.02
    releases = destination.received.releases
    responses = move(
        qr, "S", identifier("SERIES", SeriesInstanceUID=qr.bulk_series), cancel_after=1
    )
    assert responses.final_status == 0xFE00
    completed = int(responses.final.NumberOfCompletedSuboperations)
    assert 1 <= completed < BULK_COUNT
    assert int(responses.final.NumberOfRemainingSuboperations) == BULK_COUNT - completed
    # The sub-association is released as the final response goes out, not before it.
    deadline = time.monotonic() + 10
    while destination.received.releases == releases and time.monotonic() < deadline:
        time.sleep(0.02)
    assert destination.received.releases == releases + 1


def test_back_to_back_moves_use_one_destination_association_at_a_time(
    qr: QRServer, destination: Destination
) -> None:
    """The final C-MOVE response leaves while the sub-association is being released: each
    one is still released, and back-to-back C-MOVEs to one destination never hold two
    associations to it at once (the next waits for the release in flight, engine/core.py;
    this destination answers releases too quickly to force that wait)."""
    entry = qr.entries[0]
    study = identifier("STUDY", StudyInstanceUID=entry.study_uid)
    in_study = sum(1 for e in qr.entries if e.study_uid == entry.study_uid)
    received = destination.received
    with received.lock:
        received.most_open = received.open_now
        releases = received.releases
    with qr_association(qr.server, [MOVE["S"]]) as assoc:
        for number in range(5):
            responses = collect(assoc.send_c_move(study, "DEST", MOVE["S"], msg_id=number + 1))
            assert responses.final_status == 0x0000
            assert int(responses.final.NumberOfCompletedSuboperations) == in_study
    deadline = time.monotonic() + 10
    while received.releases < releases + 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert received.releases == releases + 5
    assert received.most_open == 1


def _descriptors_and_threads(server: PacsdProcess) -> tuple[int, int]:
    """The server's open descriptors and threads, not counting its connections to the index
    database and to the object store: a PostgreSQL pool, a SQLite one, and boto's, opens
    another connection whenever two requests overlap and keeps it."""
    assert server.process is not None
    pid = server.process.pid
    pooled = _pooled_sockets(pid, _pooled_ports(server)) | server.index_database_links()
    links = [descriptor_target(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    return sum(link not in pooled for link in links), len(os.listdir(f"/proc/{pid}/task"))


def _pooled_ports(server: PacsdProcess) -> set[str]:
    """The ports (hex, as /proc/net shows them) of the PostgreSQL test server and of the S3
    endpoint in `server`'s configuration."""
    ports = set()
    url = os.environ.get(POSTGRES_ENV)
    if url:
        ports.add(f"{make_url(url).port or 5432:04X}")
    settings = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    endpoint = settings.get("storage", {}).get("s3", {}).get("endpoint_url")
    if endpoint:
        ports.add(f"{urlsplit(endpoint).port:04X}")
    return ports


def _pooled_sockets(pid: int, ports: set[str]) -> set[str]:
    """`socket:[inode]` of the process's TCP connections to one of `ports`."""
    sockets = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[2].rsplit(":", 1)[1] in ports:  # remote address:port, in hex
                    sockets.add(f"socket:[{fields[9]}]")
    return sockets


@every_storage
def test_sub_associations_leave_no_descriptor_or_thread(
    qr: QRServer, destination: Destination
) -> None:
    """pacsd's outgoing associations run on its event loop (engine/requestor.py): each
    one's socket closes and no thread stays, also when the destination is down."""
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    move(qr, "S", study)  # warm: anything created once is created now
    time.sleep(1.0)
    before = _descriptors_and_threads(qr.server)
    for _ in range(10):
        assert move(qr, "S", study).final_status == 0x0000
    assert move(qr, "S", study, "DOWN").final_status != 0x0000
    deadline = time.monotonic() + 15
    after = _descriptors_and_threads(qr.server)
    while (after[0] > before[0] or after[1] > before[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _descriptors_and_threads(qr.server)
    assert after[0] <= before[0], f"descriptors {before[0]} -> {after[0]}: {_targets(qr.server)}"
    assert after[1] <= before[1], f"threads {before[1]} -> {after[1]}"


def _targets(server: PacsdProcess) -> list[str]:
    """What the server's descriptors point at (sockets with their TCP endpoints), for a
    failure message."""
    assert server.process is not None
    pid = server.process.pid
    endpoints: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                endpoints[f"socket:[{fields[9]}]"] = f"{fields[1]}->{fields[2]} st{fields[3]}"
    links = [descriptor_target(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    return sorted(f"{link} {endpoints.get(link, '')}".strip() for link in links)


def test_a_missing_stored_file_fails_its_sub_operation_and_the_others_are_sent(
    tmp_path: Path,
) -> None:
    """A stored file gone from the disk (removed by hand, a failing volume): its C-STORE
    sub-operation fails with a reason, the final status is a warning naming its UID, and
    every other instance is still sent, by C-MOVE and by C-GET alike."""
    received = Received()
    with storage_scp("DEST", received) as port:
        peers = [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]
        config = base_config(tmp_path / "server", peers=peers, policies=_policies())
        server = PacsdProcess.from_config(tmp_path / "server", config).start()
        try:
            study = datagen.StudyContext(patient_id="PID-GONE", patient_name="Gone^File")
            paths = list(datagen.ct_series(tmp_path / "files", 4, size=8, study=study))
            assert all(status == 0 for status, _ in store_files(server.host, server.port, paths))
            uids = {str(split_dataset(path)[0].MediaStorageSOPInstanceUID) for path in paths}
            gone = _remove_stored_file(tmp_path / "server" / "storage")
            query = identifier("STUDY", StudyInstanceUID=study.study_instance_uid)

            moved = collect(_move_once(server, query))
            got: dict[str, Any] = {}

            def keep(event: Any) -> int:
                got[str(event.request.AffectedSOPInstanceUID)] = event.dataset
                return 0x0000

            with qr_association(server, [GET["S"]], store_handler=keep) as assoc:
                fetched = collect(assoc.send_c_get(query, GET["S"]))
            for responses in (moved, fetched):
                assert responses.final_status == 0xB000
                assert int(responses.final.NumberOfCompletedSuboperations) == 3
                assert int(responses.final.NumberOfFailedSuboperations) == 1
                failed_list = responses.identifiers[-1]
                assert failed_list is not None
                assert failed_list.FailedSOPInstanceUIDList == gone  # one value: VM 1
            assert set(received.datasets) == set(got) == uids - {gone}
            # Each operation's line is written after its final response: wait for both.
            deadline = time.monotonic() + 15
            while True:
                reasons = [
                    line["failure_reasons"]
                    for line in server.lines
                    if line.get("event") == "dimse" and "failure_reasons" in line
                ]
                if len(reasons) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert reasons == [{"stored file missing": 1}] * 2
            assert echo(server.host, server.port)
        finally:
            server.stop()


def _move_once(server: PacsdProcess, query: Dataset) -> Iterator[tuple[Dataset, Any]]:
    with qr_association(server, [MOVE["S"]]) as assoc:
        yield from assoc.send_c_move(query, "DEST", MOVE["S"], msg_id=7)


def _remove_stored_file(storage: Path) -> str:
    """Delete one stored file of the archive in `storage`; its SOP Instance UID."""
    stored = sorted(path for path in storage.rglob("*") if path.is_file())
    victim = stored[1]
    uid = str(split_dataset(victim)[0].MediaStorageSOPInstanceUID)
    victim.unlink()
    return uid


def test_an_association_ends_after_its_operation_is_logged(qr: QRServer) -> None:
    """A release right after a final response is answered without waiting for the operation's
    audit record and log line, and yet the association's lines keep their order: the
    operation's `dimse` line, then "association closed" with the operation counted."""
    study = identifier("STUDY", StudyInstanceUID=qr.entries[0].study_uid)
    for operation in ("C-FIND", "C-MOVE"):
        calling = f"ORDER{operation[2:]}"
        with qr_association(qr.server, [FIND["S"], MOVE["S"]], calling=calling) as assoc:
            if operation == "C-FIND":
                responses = collect(assoc.send_c_find(study, FIND["S"]))
            else:
                responses = collect(assoc.send_c_move(study, "DEST", MOVE["S"]))
            assert responses.final_status == 0x0000
        deadline = time.monotonic() + 15
        while not [line for line in qr.server.events("association closed")
                   if line.get("calling_ae_title") == calling]:  # fmt: skip
            assert time.monotonic() < deadline, "no 'association closed' line"
            time.sleep(0.02)
        mine = [line for line in qr.server.lines if line.get("calling_ae_title") == calling]
        events = [line["event"] for line in mine]
        ordered = [event for event in events if event in ("dimse", "association closed")]
        assert ordered == ["dimse", "association closed"], ordered
        closed = mine[events.index("association closed")]
        assert (closed["state"], closed["operations"]) == ("released", 1)
