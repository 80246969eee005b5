"""DICOMweb of a real pacsd, driven by a client nobody here wrote (dicomweb-client, PyPI).

One pacsd on loopback; instances stored over DICOM first (pynetdicom's C-STORE): a CT series
and a native multi-frame ultrasound cine in one study, an RLE Lossless multi-frame image and
an Encapsulated PDF in another. Then dicomweb-client searches (QIDO-RS) and retrieves
(WADO-RS: instances, series, studies, metadata, bulk data, frames), and every answer is
compared with what was stored: UIDs, pixel bytes, frames, document bytes. Plain HTTP checks
the error statuses (404, 406, 400) and the HTTP rules (a request from an address no rule
allows is refused), and the audit trail's records of both kinds of request.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

dicomweb_client = pytest.importorskip("dicomweb_client")

from tests import compressed, datagen  # noqa: E402
from tests.harness import PacsdProcess, audit_records, base_config  # noqa: E402
from tests.scu import store_files  # noqa: E402

HTTP_TIMEOUT_S = 10
RULES = [{"name": "this-host-only", "address": ["127.0.0.1/32"], "allow": ["read", "admin"]}]


@dataclass
class Archive:
    """The server, its DICOMweb client and what was stored, by SOP Instance UID."""

    server: PacsdProcess
    client: Any
    stored: dict[str, Dataset]
    study_a: datagen.StudyContext
    study_b: datagen.StudyContext
    ct_uids: list[str]
    us_uid: str
    rle_uid: str
    rle_pixels: np.ndarray
    pdf_uid: str
    us_series: str
    root: Path


def _write(folder: Path, name: str, ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Path:
    if getattr(ds, "file_meta", None) is not None and syntax != ExplicitVRLittleEndian:
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return datagen.write_part10(ds, folder / name, syntax)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A pacsd holding two studies stored over DICOM, and a dicomweb-client on it."""
    root = tmp_path_factory.mktemp("dicomweb")
    config = base_config(root, http={"rules": RULES})
    server = PacsdProcess.from_config(root, config).start()
    try:
        study_a = datagen.StudyContext(patient_id="PAT-A", patient_name="Doe^Jane")
        study_b = datagen.StudyContext(
            patient_id="PAT-B", patient_name="Smith^John", study_date="20250101",
            series_instance_uid=datagen.generate_uid(datagen.TEST_UID_ROOT),
        )  # fmt: skip
        inputs = root / "inputs"
        cts = [datagen.ct_image(study_a, number, size=64) for number in (1, 2, 3)]
        us_study = datagen.StudyContext(**{**study_a.__dict__})
        us_study.series_instance_uid = datagen.generate_uid(datagen.TEST_UID_ROOT)
        us = datagen.us_multiframe(us_study, 4, frames=8)
        rle, rle_pixels = compressed.image_dataset("multiframe", study_b)
        compressed.encode_instance(rle, RLELossless)
        pdf = datagen.encapsulated_pdf(study_b, 2)
        paths = [_write(inputs, f"ct{n}.dcm", ds) for n, ds in enumerate(cts)]
        paths += [_write(inputs, "us.dcm", us), _write(inputs, "pdf.dcm", pdf)]
        paths.append(_write(inputs, "rle.dcm", rle, RLELossless))
        results = store_files(server.host, server.port, paths)
        assert [status for status, _ in results] == [0] * len(paths), results
        stored = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, paths)}
        client = dicomweb_client.DICOMwebClient(f"{server.http_url}/dicom-web")
        yield Archive(
            server, client, stored, study_a, study_b, [str(ds.SOPInstanceUID) for ds in cts],
            str(us.SOPInstanceUID), str(rle.SOPInstanceUID), rle_pixels, str(pdf.SOPInstanceUID),
            us_study.series_instance_uid, root,
        )  # fmt: skip
    finally:
        server.stop()


def values(document: dict[str, Any], keyword_tag: str) -> list[Any]:
    """The Value of one attribute of a DICOM JSON object ([] when absent or empty)."""
    return list(document.get(keyword_tag, {}).get("Value", []))


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def uids(documents: list[dict[str, Any]], tag: str) -> set[str]:
    """The UIDs of `tag` in the documents."""
    return {values(document, tag)[0] for document in documents}


def test_qido_studies_match_with_the_c_find_engine(archive: Archive) -> None:
    """QIDO-RS studies: all, wild card, date range, UID list, fuzzy names, limit/offset,
    includefield; each answer carries the attributes PS3.18 requires, with counts."""
    client, a, b = archive.client, archive.study_a, archive.study_b
    every = client.search_for_studies()
    assert uids(every, STUDY_UID) == {a.study_instance_uid, b.study_instance_uid}
    by_a = {values(d, STUDY_UID)[0]: d for d in every}[a.study_instance_uid]
    assert values(by_a, "00201208") == [4]  # NumberOfStudyRelatedInstances: 3 CT + US
    assert values(by_a, "00201206") == [2]  # NumberOfStudyRelatedSeries
    assert sorted(values(by_a, "00080061")) == ["CT", "US"]  # ModalitiesInStudy
    assert values(by_a, "00080056") == ["ONLINE"]
    assert values(by_a, "00081190")[0].endswith(f"/dicom-web/studies/{a.study_instance_uid}")
    assert values(by_a, "00100010") == [{"Alphabetic": "Doe^Jane"}]
    doe = client.search_for_studies(search_filters={"PatientName": "Doe*"})
    assert uids(doe, STUDY_UID) == {a.study_instance_uid}
    dated = client.search_for_studies(search_filters={"StudyDate": "20250101-20251231"})
    assert uids(dated, STUDY_UID) == {b.study_instance_uid}
    both = f"{a.study_instance_uid},{b.study_instance_uid}"
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": both})
    assert len(listed) == 2
    assert client.search_for_studies(search_filters={"PatientName": "jane doe"}) == []
    fuzzy = client.search_for_studies(
        fuzzymatching=True, search_filters={"PatientName": "jane doe"}
    )
    assert uids(fuzzy, STUDY_UID) == {a.study_instance_uid}
    first = client.search_for_studies(limit=1)
    second = client.search_for_studies(limit=1, offset=1)
    assert len(first) == len(second) == 1
    assert uids(first, STUDY_UID) | uids(second, STUDY_UID) == uids(every, STUDY_UID)
    assert client.search_for_studies(offset=2) == []
    fields = client.search_for_studies(
        fields=["00081030", "IssuerOfPatientID"], search_filters={"00100020": "PAT-B"}
    )
    assert values(fields[0], "00081030") == ["Generated study"]
    assert "00100021" in fields[0]
    everything = client.search_for_studies(fields=["all"], search_filters={"PatientID": "PAT-B"})
    assert sorted(values(everything[0], "00080062")) == sorted(  # SOPClassesInStudy
        {str(archive.stored[archive.rle_uid].SOPClassUID), "1.2.840.10008.5.1.4.1.1.104.1"}
    )


def test_qido_series_and_instances_at_every_level(archive: Archive) -> None:
    """Series and instances: nested under a study and a series, and across the archive, with
    keys of the levels above (relational) and the level's default attributes."""
    client, a = archive.client, archive.study_a
    series = client.search_for_series(a.study_instance_uid)
    assert uids(series, SERIES_UID) == {a.series_instance_uid, archive.us_series}
    counts = {values(d, SERIES_UID)[0]: values(d, "00201209") for d in series}
    assert counts == {a.series_instance_uid: [3], archive.us_series: [1]}
    ultrasound = client.search_for_series(search_filters={"Modality": "US"})
    assert uids(ultrasound, SERIES_UID) == {archive.us_series}
    assert values(ultrasound[0], STUDY_UID) == [a.study_instance_uid]  # study attributes too
    in_series = client.search_for_instances(a.study_instance_uid, a.series_instance_uid)
    assert uids(in_series, SOP_UID) == set(archive.ct_uids)
    assert {values(d, "00280010")[0] for d in in_series} == {64}  # Rows
    in_study = client.search_for_instances(a.study_instance_uid)
    assert uids(in_study, SOP_UID) == {*archive.ct_uids, archive.us_uid}
    us_only = client.search_for_instances(search_filters={"PatientID": "PAT-A", "Modality": "US"})
    assert uids(us_only, SOP_UID) == {archive.us_uid}
    assert values(us_only[0], "00280008") == [8]  # NumberOfFrames
    numbered = client.search_for_instances(
        a.study_instance_uid, a.series_instance_uid, search_filters={"InstanceNumber": "2"}
    )
    assert uids(numbered, SOP_UID) == {archive.ct_uids[1]}


def test_wado_instances_series_and_studies(archive: Archive) -> None:
    """Instances come back with the stored UIDs and pixel bytes: native as stored, the RLE
    instance as stored with transfer-syntax=* (dicomweb-client's default), decoded when
    Explicit VR Little Endian is asked for."""
    client, a = archive.client, archive.study_a
    ct = client.retrieve_instance(a.study_instance_uid, a.series_instance_uid, archive.ct_uids[0])
    assert ct.PixelData == archive.stored[archive.ct_uids[0]].PixelData
    series = client.retrieve_series(a.study_instance_uid, a.series_instance_uid)
    assert {str(ds.SOPInstanceUID) for ds in series} == set(archive.ct_uids)
    study = client.retrieve_study(a.study_instance_uid)
    assert {str(ds.SOPInstanceUID) for ds in study} == {*archive.ct_uids, archive.us_uid}
    for ds in study:
        assert ds.PixelData == archive.stored[str(ds.SOPInstanceUID)].PixelData
    b, rle_uid = archive.study_b, archive.rle_uid
    series_b = archive.stored[rle_uid].SeriesInstanceUID
    as_stored = client.retrieve_instance(b.study_instance_uid, series_b, rle_uid)  # "*"
    assert as_stored.file_meta.TransferSyntaxUID == RLELossless
    assert as_stored.PixelData == archive.stored[rle_uid].PixelData
    explicit = (("application/dicom", ExplicitVRLittleEndian),)
    decoded = client.retrieve_instance(
        b.study_instance_uid, series_b, rle_uid, media_types=explicit
    )
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, archive.rle_pixels)


def test_wado_metadata_and_bulk_data(archive: Archive) -> None:
    """Metadata: one DICOM JSON object per instance, bulk data as BulkDataURI; the bulk data
    resources give back the stored bytes (pixel data, the PDF document)."""
    client, b = archive.client, archive.study_b
    metadata = client.retrieve_study_metadata(b.study_instance_uid)
    assert uids(metadata, SOP_UID) == {archive.rle_uid, archive.pdf_uid}
    pdf = {values(d, SOP_UID)[0]: d for d in metadata}[archive.pdf_uid]
    assert values(pdf, "00100020") == ["PAT-B"]
    document_uri = pdf["00420011"]["BulkDataURI"]
    (document,) = client.retrieve_bulkdata(document_uri)
    assert document == archive.stored[archive.pdf_uid].EncapsulatedDocument
    a = archive.study_a
    series_meta = client.retrieve_series_metadata(a.study_instance_uid, archive.us_series)
    (us_meta,) = series_meta
    assert values(us_meta, "00280008") == [8]
    (pixels,) = client.retrieve_bulkdata(us_meta["7FE00010"]["BulkDataURI"])
    assert pixels == archive.stored[archive.us_uid].PixelData
    instance_meta = client.retrieve_instance_metadata(
        a.study_instance_uid, a.series_instance_uid, archive.ct_uids[2]
    )
    assert values(instance_meta, "00200013") == [3]  # InstanceNumber


def test_wado_frames_native_and_compressed(archive: Archive) -> None:
    """Frames in the order asked: native slices of the stored pixel data; compressed frames
    as stored (image/dicom-rle) by default, decoded when application/octet-stream is asked."""
    client, a = archive.client, archive.study_a
    us = archive.stored[archive.us_uid]
    size = 64 * 64 * 3
    frames = client.retrieve_instance_frames(
        a.study_instance_uid, archive.us_series, archive.us_uid, [5, 2]
    )
    assert frames == [us.PixelData[4 * size : 5 * size], us.PixelData[size : 2 * size]]
    b, rle = archive.study_b, archive.stored[archive.rle_uid]
    series_b = str(rle.SeriesInstanceUID)
    stored_frames = list(generate_frames(rle.PixelData, number_of_frames=3))
    compressed_frames = client.retrieve_instance_frames(
        b.study_instance_uid, series_b, archive.rle_uid, [1, 3]
    )
    assert compressed_frames == [stored_frames[0], stored_frames[2]]
    native = client.retrieve_instance_frames(
        b.study_instance_uid, series_b, archive.rle_uid, [2],
        media_types=("application/octet-stream",),
    )  # fmt: skip
    assert native == [archive.rle_pixels[1].tobytes()]


def http_get(
    archive: Archive, path: str, accept: str = "*/*", source: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET `path` of the server with `accept`, from `source` (an address of loopback)."""
    host, port = archive.server.http_url.removeprefix("http://").split(":")
    address = (source, 0) if source else None
    connection = http.client.HTTPConnection(host, int(port), HTTP_TIMEOUT_S, address)
    try:
        connection.request("GET", path, headers={"Accept": accept})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_errors_guard_and_audit(archive: Archive) -> None:
    """404 for unknown UIDs and frames, 406 for a transfer syntax pacsd cannot make, 400 with
    the reason for bad query parameters, 403 for an address no HTTP rule allows; both kinds of
    request are in the audit trail with the HTTP requester."""
    a = archive.study_a
    status, _, body = http_get(archive, "/dicom-web/studies/1.2.3.4.5")
    assert status == 404, body
    assert b"no such study" in body
    status, _, _ = http_get(archive, f"/dicom-web/studies/{a.study_instance_uid}/series/1.2.3")
    assert status == 404
    frames = f"/dicom-web/studies/{a.study_instance_uid}/series/{archive.us_series}/instances/"
    status, _, _ = http_get(archive, f"{frames}{archive.us_uid}/frames/9")
    assert status == 404
    bad_syntax = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4.5'
    status, _, body = http_get(archive, f"/dicom-web/studies/{a.study_instance_uid}", bad_syntax)
    assert status == 406, body
    status, _, body = http_get(archive, "/dicom-web/studies?limit=many")
    assert status == 400, body
    assert b"limit" in body
    status, _, body = http_get(archive, "/dicom-web/studies?NoSuchKeyword=1")
    assert status == 400, body
    assert b"NoSuchKeyword" in body
    status, _, _ = http_get(archive, "/dicom-web/studies", source="127.0.0.2")
    assert status == 403
    audit_file = archive.root / "audit.jsonl"
    records = audit_records(audit_file)
    events = [r["EventIdentification"]["EventID"]["csd-code"] for r in records]
    assert "110112" in events  # Query
    assert "110104" in events  # DICOM Instances Transferred
    web = [
        r
        for r in records
        if "WADO-RS" in r["EventIdentification"].get("EventOutcomeDescription", "")
    ]
    assert web
    addresses = [p.get("NetworkAccessPointID") for p in web[0]["ActiveParticipant"]]
    assert "127.0.0.1" in addresses
