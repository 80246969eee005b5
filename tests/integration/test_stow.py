"""STOW-RS and the rendered and thumbnail resources of a real pacsd (PS3.18 10.5, 9.5, 9.6).

A real pacsd on loopback; dicomweb-client (an independent DICOMweb implementation) stores and
renders, requests sends hand-made multipart bodies (a truncated part, wrong media types, a
200 MB instance streamed from a sparse file), pynetdicom's C-FIND finds what was stored, and
the stored files are read back with pydicom. Rendered images are decoded with Pillow.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests import datagen
from tests.admin_archive import found_instance_uids
from tests.compressed import compressed_ct_dataset
from tests.harness import PacsdProcess, audit_records, base_config
from tests.inspect_archive import index_rows

HTTP_TIMEOUT_S = 120
LARGE_SIZE = 200 * 1024 * 1024  # pixel data bytes of the large instance
RSS_BOUND = 96 * 1024 * 1024  # what the server may grow by while the large one uploads
MULTIPART = 'multipart/related; type="application/dicom"; boundary={}'
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, RETRIEVE_URL = "00081197", "00081190"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsdProcess]:
    """One pacsd for the module, allowing instances up to 300 MB."""
    folder = tmp_path_factory.mktemp("stow")
    config = base_config(folder, limits={"max_dataset_size": "300MB"})
    process = PacsdProcess.from_config(folder, config).start()
    yield process
    process.stop()


def client(server: PacsdProcess) -> DICOMwebClient:
    """dicomweb-client on the server's DICOMweb root."""
    return DICOMwebClient(f"{server.http_url}/dicom-web")


def part10(ds: Dataset) -> bytes:
    """`ds` as a Part 10 file (its file_meta's transfer syntax)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_meta(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """`ds` with a file meta group for `syntax`."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def study_of(count: int, study: datagen.StudyContext | None = None) -> list[Dataset]:
    """`count` small uncompressed CT images of one study."""
    context = study or datagen.StudyContext(patient_name="Stow^Test")
    return [with_meta(datagen.ct_image(context, number, size=32)) for number in range(1, count + 1)]


def multipart(parts: list[bytes], boundary: str) -> bytes:
    """A multipart/related body of application/dicom parts."""
    body = io.BytesIO()
    for part in parts:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue()


def post(server: PacsdProcess, body: Any, content_type: str, path: str = "") -> requests.Response:
    """POST a body to /dicom-web/studies[path]."""
    url = f"{server.http_url}/dicom-web/studies{path}"
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    return requests.post(url, data=body, headers=headers, timeout=HTTP_TIMEOUT_S)


def stored_path(server: PacsdProcess, sop_instance_uid: str) -> Path:
    """The stored file of an instance, from the index."""
    url = f"sqlite:///{server.config_path.parent / 'index.sqlite'}"
    rows = [row for row in index_rows(url) if row["sop_instance_uid"] == sop_instance_uid]
    assert len(rows) == 1, sop_instance_uid
    return server.storage_root / rows[0]["file_path"]


def items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """The items of a sequence in a DICOM JSON response."""
    return list(document.get(tag, {}).get("Value", []))


def test_store_uncompressed_and_compressed_then_found_and_equal(server: PacsdProcess) -> None:
    """dicomweb-client stores 3 uncompressed and 3 compressed instances (RLE, JPEG-LS, JPEG
    2000 lossless) of one study: the response references each with its RetrieveURL, C-FIND
    finds all six, and each stored file's data set equals the uploaded one."""
    study = datagen.StudyContext(patient_name="Stow^Mixed")
    datasets = study_of(3, study)
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds = compressed_ct_dataset(syntax)
        ds.StudyInstanceUID = study.study_instance_uid
        datasets.append(ds)
    response = client(server).store_instances(datasets)
    referenced = response.ReferencedSOPSequence
    assert {item.ReferencedSOPInstanceUID for item in referenced} == {
        ds.SOPInstanceUID for ds in datasets
    }
    assert "FailedSOPSequence" not in response
    for item in referenced:  # the host as the client named it (dicomweb-client: no port)
        path = urlsplit(item.RetrieveURL).path
        assert path.startswith("/dicom-web/studies/"), item.RetrieveURL
        assert path.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")
    assert found_instance_uids(server, study.study_instance_uid) == {
        ds.SOPInstanceUID for ds in datasets
    }
    for ds in datasets:
        stored = dcmread(stored_path(server, ds.SOPInstanceUID))
        assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert stored == ds, ds.file_meta.TransferSyntaxUID


def test_truncated_part_fails_others_stored(server: PacsdProcess) -> None:
    """Of three parts, the middle one holding a truncated data set is in the Failed SOP
    Sequence with Failure Reason 0xC000 (cannot understand); the others are stored: 202 with a
    Warning header."""
    datasets = study_of(3)
    encoded = [part10(ds) for ds in datasets]
    encoded[1] = encoded[1][: len(encoded[1]) // 2]
    boundary = uuid.uuid4().hex
    response = post(server, multipart(encoded, boundary), MULTIPART.format(boundary))
    assert response.status_code == 202, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    assert "Warning" in response.headers
    document = response.json()
    failed = items(document, FAILED_SOP_SEQUENCE)
    assert len(failed) == 1
    assert failed[0][FAILURE_REASON]["Value"] == [0xC000]
    stored = {item["00081155"]["Value"][0] for item in items(document, REFERENCED_SOP_SEQUENCE)}
    assert stored == {datasets[0].SOPInstanceUID, datasets[2].SOPInstanceUID}
    study_uid = datasets[0].StudyInstanceUID
    assert found_instance_uids(server, study_uid) == stored


def test_wrong_study_in_path_fails_that_instance(server: PacsdProcess) -> None:
    """POST /studies/{study}: an instance of another study fails (409 when it is the only one);
    an instance of that study is stored (200)."""
    (ds,) = study_of(1)
    boundary = uuid.uuid4().hex
    body = multipart([part10(ds)], boundary)
    other = f"/{generate_uid()}"
    response = post(server, body, MULTIPART.format(boundary), other)
    assert response.status_code == 409, response.text
    assert items(response.json(), FAILED_SOP_SEQUENCE)[0][FAILURE_REASON]["Value"] == [0xA900]
    response = post(server, body, MULTIPART.format(boundary), f"/{ds.StudyInstanceUID}")
    assert response.status_code == 200, response.text
    assert response.json()[RETRIEVE_URL]["Value"][0].endswith(ds.StudyInstanceUID)


def test_unsupported_media_types_are_415_and_malformed_400(server: PacsdProcess) -> None:
    """application/json, multipart/related of application/dicom+json: 415; a multipart body
    without its closing boundary, or without a boundary parameter: 400."""
    (ds,) = study_of(1)
    assert post(server, b"{}", "application/json").status_code == 415
    boundary = uuid.uuid4().hex
    body = multipart([part10(ds)], boundary)
    json_type = f'multipart/related; type="application/dicom+json"; boundary={boundary}'
    assert post(server, body, json_type).status_code == 415
    cut = body[: -len(f"--{boundary}--\r\n") - 100]
    assert post(server, cut, MULTIPART.format(boundary)).status_code == 400
    assert post(server, body, 'multipart/related; type="application/dicom"').status_code == 400


def test_upload_refused_without_an_upload_rule(tmp_path: Path) -> None:
    """With a rule that allows only reading, STOW-RS answers 403 and stores nothing."""
    rules = [{"name": "readers", "allow": ["read"]}]
    config = base_config(tmp_path, http={"host": "127.0.0.1", "port": 0, "rules": rules})
    process = PacsdProcess.from_config(tmp_path, config).start()
    try:
        datasets = study_of(1)
        with pytest.raises(requests.HTTPError) as refused:
            client(process).store_instances(datasets)
        assert refused.value.response.status_code == 403
        assert found_instance_uids(process, datasets[0].StudyInstanceUID) == set()
    finally:
        process.stop()


def _large_instance_head() -> tuple[Dataset, bytes]:
    """A CT header (Part 10, Explicit VR Little Endian) ending with the Pixel Data element's
    header of LARGE_SIZE bytes: the pixel data itself is left to a sparse file."""
    ds = with_meta(datagen.ct_image(datagen.StudyContext(patient_name="Stow^Large"), 1, size=8))
    del ds.PixelData
    ds.Rows = ds.Columns = 10240  # 10240 x 10240 x 16 bits = 200 MiB
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    write_dataset(out, ds)
    out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + LARGE_SIZE.to_bytes(4, "little"))
    return ds, out.getvalue()


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_large_instance_uploads_with_bounded_memory(server: PacsdProcess, tmp_path: Path) -> None:
    """A 200 MB instance (a sparse file, streamed by requests in chunks) is stored (200) while
    the server's resident memory, sampled every 50 ms, grows by well under the instance's
    size; the stored file holds the whole pixel data."""
    ds, head = _large_instance_head()
    source = tmp_path / "large.dcm"
    with source.open("wb") as fp:
        fp.write(head)
        fp.truncate(len(head) + LARGE_SIZE)
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with source.open("rb") as fp:
            while chunk := fp.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    assert server.process is not None
    pid = server.process.pid
    before = _rss_kib(pid, "VmRSS")
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + HTTP_TIMEOUT_S
        while not done.wait(0.05) and time.monotonic() < deadline:
            peak[0] = max(peak[0], _rss_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        response = post(server, body(), MULTIPART.format(boundary))
    finally:
        done.set()
        sampler.join(timeout=5)
    assert response.status_code == 200, response.text
    grown = (peak[0] - before) * 1024
    assert grown < RSS_BOUND, f"server RSS grew by {grown / 2**20:.0f} MiB"
    stored = stored_path(server, ds.SOPInstanceUID)
    assert stored.stat().st_size > LARGE_SIZE


def test_rendered_and_thumbnails_decode_at_the_right_size(server: PacsdProcess) -> None:
    """A 32x32 CT instance, a 3-frame US instance and a JPEG 2000 CT: /rendered as JPEG (the
    default) and PNG (dicomweb-client) at the image's size, a frame's /rendered, the series'
    /rendered, and /thumbnail at study, series and instance level within `viewport=w,h`;
    image/gif is 406, an unknown instance 404."""
    study = datagen.StudyContext(patient_name="Stow^Render")
    ct = with_meta(datagen.ct_image(study, 1, size=32))
    us = with_meta(datagen.us_multiframe(study, 2, frames=3))
    j2k = compressed_ct_dataset(JPEG2000Lossless)
    web = client(server)
    web.store_instances([ct, us, j2k])
    keys = (study.study_instance_uid, study.series_instance_uid)
    for ds in (ct, us, j2k):
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        png = web.retrieve_instance_rendered(*uids, media_types=("image/png",))
        assert _image(png, "PNG").size == (ds.Columns, ds.Rows)
        jpeg = web.retrieve_instance_rendered(*uids)
        assert _image(jpeg, "JPEG").size == (ds.Columns, ds.Rows)
    frame = web.retrieve_instance_frames_rendered(*keys, us.SOPInstanceUID, [3])
    assert _image(frame, "JPEG").size == (us.Columns, us.Rows)
    assert _image(web.retrieve_series_rendered(*keys), "JPEG").size == (ct.Columns, ct.Rows)
    base = f"{server.http_url}/dicom-web/studies/{study.study_instance_uid}"
    for path in ("", f"/series/{study.series_instance_uid}",
                 f"/series/{study.series_instance_uid}/instances/{us.SOPInstanceUID}"):  # fmt: skip
        answer = requests.get(f"{base}{path}/thumbnail", params={"viewport": "16,8"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "image/jpeg"
        width, height = _image(answer.content, "JPEG").size
        assert width <= 16
        assert height <= 8
    png = requests.get(f"{base}/thumbnail", headers={"Accept": "image/png"}, timeout=30)
    assert _image(png.content, "PNG").size == (32, 32)
    gif = requests.get(f"{base}/thumbnail", headers={"Accept": "image/gif"}, timeout=30)
    assert gif.status_code == 406
    missing = requests.get(f"{base}/series/1.2.3/instances/1.2.3.4/rendered", timeout=30)
    assert missing.status_code == 404


def _image(body: bytes, expected_format: str) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    assert image.format == expected_format
    return image


def test_stow_audited_with_the_http_requester(server: PacsdProcess) -> None:
    """A STOW-RS upload leaves a DICOM Instances Transferred (C) audit message for its study
    naming the HTTP requester's address."""
    datasets = study_of(2)
    client(server).store_instances(datasets)
    audit_file = server.config_path.parent / "audit.jsonl"
    study_uid = datasets[0].StudyInstanceUID
    deadline = time.monotonic() + 10
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not messages:
        messages = [m for m in audit_records(audit_file) if study_uid in json.dumps(m)]
        time.sleep(0.1)
    assert len(messages) == 1, messages
    message = messages[0]
    assert message["EventIdentification"]["EventID"]["csd-code"] == "110104"
    assert message["EventIdentification"]["EventActionCode"] == "C"
    sources = [p for p in message["ActiveParticipant"] if p["UserIsRequestor"]]
    assert sources[0]["NetworkAccessPointID"] == "127.0.0.1"
    assert CTImageStorage in json.dumps(message)
