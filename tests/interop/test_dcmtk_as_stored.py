"""Retrieve as stored (issue 17): instances stored compressed (RLE, JPEG Baseline, JPEG-LS
lossless, JPEG 2000 lossless) reach getscu and a movescu destination byte for byte whenever the
receiver accepts the stored transfer syntax; pacsd converts only what the receiver refuses.

getscu proposes, per storage SOP class, one context with its preferred syntax first: pacsd
(which sends on it) accepts the receiver's preference. For C-MOVE, pacsd proposes the stored
syntaxes itself, one context each, beside an uncompressed one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests import compressed
from tests.conftest import _backends, index_url
from tests.harness import PacsdProcess, base_config
from tests.inspect_archive import dataset_bytes
from tests.interop.test_dcmtk_qr import DESTINATION, at_pacsd, key_options, run, storescp
from tests.scu import store_files

# Stored syntax -> the getscu option that prefers it (DCMTK 3.6.7).
PREFER = {
    RLELossless: "+xr",
    JPEGBaseline8Bit: "+xy",
    JPEGLSLossless: "+xt",
    JPEG2000Lossless: "+xv",
}


@dataclass
class Stored:
    path: Path
    syntax: str
    study: str
    series: str
    instance: str


@dataclass
class Archive:
    server: PacsdProcess
    stored: list[Stored]
    destination: Path


@pytest.fixture(scope="module", params=_backends())
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dcmtk: None
) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("as-stored")
    # storescp +xa accepts every syntax it knows, so pacsd's stored-syntax contexts are taken.
    with index_url(request.param, root) as url, storescp(root / "moved", "+xa") as scp:
        peers = [{"ae_title": DESTINATION, "host": "127.0.0.1", "port": scp.port}]
        server = PacsdProcess.from_config(
            root / "server", base_config(root / "server", url, peers=peers)
        )
        server.start()
        try:
            stored = []
            for number, syntax in enumerate(PREFER):
                ds = compressed.compressed_ct_dataset(syntax)
                path = root / "in" / f"{number}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
                stored.append(Stored(path, syntax, *map(str, uids)))
            results = store_files(server.host, server.port, [s.path for s in stored])
            assert [status for status, _ in results] == [0x0000] * len(stored), results
            yield Archive(server, stored, scp.folder)
        finally:
            server.stop()


def _image_keys(item: Stored) -> list[str]:
    return key_options(
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": item.study,
            "SeriesInstanceUID": item.series,
            "SOPInstanceUID": item.instance,
        }
    )


def _c_get_line(server: PacsdProcess, calling: str) -> dict[str, Any]:
    """The one C-GET log line of `calling` (the log is read by a thread: a bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            line
            for line in server.events("dimse")
            if line.get("operation") == "C-GET" and line.get("calling_ae_title") == calling
        ]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)


@pytest.mark.parametrize("syntax", list(PREFER), ids=lambda uid: str(uid).rsplit(".", 1)[-1])
def test_getscu_preferring_the_stored_syntax_gets_the_bytes_as_stored(
    archive: Archive, tmp_path: Path, syntax: str
) -> None:
    item = next(s for s in archive.stored if s.syntax == syntax)
    folder = tmp_path / "got"
    folder.mkdir()
    options = ["-S", PREFER[syntax], "-od", str(folder), *_image_keys(item)]
    calling = f"GETAS{PREFER[syntax][-1].upper()}"
    result = run("getscu", *at_pacsd(archive.server, *options, calling=calling))
    received = sorted(folder.iterdir())
    assert len(received) == 1, result.stderr  # getscu 3.6.7 may crash after (dicom-notes)
    assert dcmread(received[0]).file_meta.TransferSyntaxUID == syntax
    assert dataset_bytes(received[0]) == dataset_bytes(item.path)
    line = _c_get_line(archive.server, calling)
    assert "converted" not in line, line


def test_getscu_preferring_uncompressed_gets_a_conversion(archive: Archive, tmp_path: Path) -> None:
    """Explicit VR Little Endian first: the JPEG-LS instance is decoded for it (lossless)."""
    item = next(s for s in archive.stored if s.syntax == JPEGLSLossless)
    folder = tmp_path / "got"
    folder.mkdir()
    options = ["-S", "+xe", "-od", str(folder), *_image_keys(item)]
    result = run("getscu", *at_pacsd(archive.server, *options, calling="GETPLAIN"))
    received = sorted(folder.iterdir())
    assert len(received) == 1, result.stderr
    got = dcmread(received[0])
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (got.pixel_array == dcmread(item.path).pixel_array).all()
    line = _c_get_line(archive.server, "GETPLAIN")
    assert line["converted"] == {"JPEGLSLossless -> ExplicitVRLittleEndian": 1}, line


def test_movescu_destination_gets_every_instance_as_stored(archive: Archive) -> None:
    for old in archive.destination.iterdir():
        old.unlink()
    for item in archive.stored:
        options = ["-S", "-aem", DESTINATION, *key_options(
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": item.study}
        )]  # fmt: skip
        result = run("movescu", *at_pacsd(archive.server, *options, calling="MOVEASSTORED"))
        assert result.returncode == 0, result.stderr
    received = {str(dcmread(path).SOPInstanceUID): path for path in archive.destination.iterdir()}
    assert set(received) == {item.instance for item in archive.stored}
    for item in archive.stored:
        moved = received[item.instance]
        assert dcmread(moved).file_meta.TransferSyntaxUID == item.syntax
        assert dataset_bytes(moved) == dataset_bytes(item.path), item.syntax
