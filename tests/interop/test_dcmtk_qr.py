"""Query/Retrieve interoperability: DCMTK's findscu, getscu and movescu against a real pacsd.

One pacsd per index backend holds the archive of tests/qr_archive.py; its peer table names a
DCMTK storescp started here as the C-MOVE destination. Every expected result is computed from
the generated entries with a few lines of Python, never by pacsd's code.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests import qr_archive
from tests.conftest import _backends, index_url
from tests.harness import PacsdProcess, base_config
from tests.qr_archive import Entry
from tests.scu import store_files

pytestmark = pytest.mark.usefixtures("dcmtk")
TOOL_TIMEOUT_S = 60
READY_TIMEOUT_S = 15.0
# DCMTK leaves Nagle on unless told; it costs ~40 ms per exchange (docs/dicom-notes.md,
# "Sockets and measurement").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CALLING = "DCMTKSCU"
DESTINATION = "STORESCP"
# findscu/movescu -d print the final response's status as "DIMSE Status : 0xa900: ...".
DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})")


@dataclass
class StoreSCP:
    """A DCMTK storescp: the C-MOVE destination, writing what it receives to `folder`."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path


@dataclass
class QRArchive:
    """A running pacsd holding the archive, and the storescp in its peer table."""

    server: PacsdProcess
    entries: list[Entry]
    destination: StoreSCP


# Processes and files ---------------------------------------------------------------------------


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion, bounded in time."""
    return subprocess.run(
        [tool, *args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env=DCMTK_ENV,
        check=False,
    )


def at_pacsd(server: PacsdProcess, *args: str, calling: str = CALLING) -> list[str]:
    """Arguments that aim a tool at pacsd from `calling` (an AE title that names the test)."""
    return ["-aet", calling, "-aec", "PACSD", *args, server.host, str(server.port)]


def key_options(keys: dict[str, str]) -> list[str]:
    """-k options: "Keyword=value" to match, a bare keyword ("" value) to ask for it back."""
    options: list[str] = []
    for keyword, value in keys.items():
        options += ["-k", f"{keyword}={value}" if value else keyword]
    return options


def statuses(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The DIMSE statuses a tool run with -d printed, in order."""
    return [int(value, 16) for value in DIMSE_STATUS.findall(result.stdout + result.stderr)]


def datasets_in(folder: Path) -> dict[str, Dataset]:
    """The files a DCMTK tool wrote to `folder`, by SOP Instance UID."""
    found = (dcmread(path) for path in sorted(folder.iterdir()) if path.is_file())
    return {str(ds.SOPInstanceUID): ds for ds in found}


def elements(ds: Dataset) -> dict[str, tuple[str, Any]]:
    """Every data element (file meta aside) as keyword -> (VR, value), for a readable diff."""
    return {elem.keyword or str(elem.tag): (elem.VR, elem.value) for elem in ds}


def assert_same_as_stored(qr: QRArchive, received: dict[str, Dataset], expected: set[str]) -> None:
    """Exactly the expected instances arrived, each with the original's elements and pixels."""
    assert set(received) == expected
    originals = {entry.sop_instance_uid: entry.path for entry in qr.entries}
    for uid, ds in received.items():
        original = dcmread(originals[uid])
        assert elements(ds) == elements(original), f"{uid} differs from the stored instance"
        assert ds.PixelData == original.PixelData


def logged_operation(server: PacsdProcess, operation: str, calling: str) -> dict[str, Any]:
    """pacsd's "dimse" log line for `calling`'s `operation` (bounded wait: it may come late)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.events("dimse"):
            if (line.get("operation"), line.get("calling_ae_title")) == (operation, calling):
                return line
        time.sleep(0.05)
    raise AssertionError(f"pacsd logged no {operation} from {calling}:\n{server.output()}")


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    """Poll C-ECHO until storescp answers (True) or exits, e.g. port taken (False); bounded."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        echo = run("echoscu", "-to", "2", "-aec", DESTINATION, "127.0.0.1", str(port))
        if echo.returncode == 0:
            return True
        time.sleep(0.1)
    raise TimeoutError(f"storescp on port {port} gave no C-ECHO answer in {READY_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process by its pid, SIGKILL it if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def storescp(folder: Path, *options: str) -> Iterator[StoreSCP]:
    """A DCMTK storescp on a free loopback port (with `options`), stopped by its pid afterwards.

    The port is picked free then handed over, so another process may take it in between:
    storescp then exits at once and a new port is tried.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = _free_loopback_port()
        command = ["storescp", "--aetitle", DESTINATION, *options, "-od", str(folder), str(port)]
        with (folder.parent / "storescp.log").open("ab") as log:
            process = subprocess.Popen(command, env=DCMTK_ENV, stdout=log, stderr=log)
        try:
            if _wait_until_ready(process, port):
                yield StoreSCP(process, port, folder)
                return
        finally:
            _stop(process)
    raise RuntimeError("storescp did not start on any of three free ports")


# The archive -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=_backends())
def qr(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dcmtk: None
) -> Iterator[QRArchive]:
    """pacsd on the backend, holding the archive, with storescp as peer STORESCP."""
    root = tmp_path_factory.mktemp("dcmtk-qr")
    with index_url(request.param, root) as url, storescp(root / "storescp") as destination:
        peers = [{"ae_title": DESTINATION, "host": "127.0.0.1", "port": destination.port}]
        config = base_config(root / "server", url, peers=peers)
        server = PacsdProcess.from_config(root / "server", config)
        try:
            server.start()
            entries = qr_archive.build(root / "files")
            results = store_files(server.host, server.port, [e.path for e in entries])
            assert all(status == 0x0000 for status, _comment in results), results
            yield QRArchive(server, entries, destination)
        finally:
            server.stop()


@pytest.fixture
def destination(qr: QRArchive) -> StoreSCP:
    """The storescp, with nothing received yet in this test."""
    for path in qr.destination.folder.iterdir():
        path.unlink()
    return qr.destination


def study_of(qr: QRArchive, accession: str) -> Entry:
    """The first entry of the study with `accession`."""
    return next(e for e in qr.entries if e.accession == accession)


# C-FIND ----------------------------------------------------------------------------------------


def findscu(
    qr: QRArchive,
    folder: Path,
    model: str,
    level: str,
    keys: dict[str, str],
    calling: str = CALLING,
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """findscu -P/-S with `keys`, each response extracted (-X) to `folder` and read back."""
    folder.mkdir()
    options = ["-d", "-X", "-od", str(folder), *key_options({"QueryRetrieveLevel": level, **keys})]
    result = run("findscu", *at_pacsd(qr.server, f"-{model}", *options, calling=calling))
    return result, [dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def found(responses: Sequence[Dataset], keyword: str) -> set[str]:
    """One key's values over the responses."""
    return {str(ds.get(keyword, "")) for ds in responses}


Predicate = Callable[[Entry], bool]


def named(prefix: str) -> Predicate:
    """Patients whose name starts with `prefix`, case included (PS3.4 C.2.2.2.4)."""
    return lambda e: e.patient_name.startswith(prefix)


def dated(low: str = "00000000", high: str = "99999999") -> Predicate:
    """Studies dated from `low` to `high`, both included (PS3.4 C.2.2.2.5)."""
    return lambda e: low <= e.study_date <= high


def of_patient(patient_id: str) -> Predicate:
    """Studies of one patient."""
    return lambda e: e.patient_id == patient_id


def both(first: Predicate, second: Predicate) -> Predicate:
    """Entries that satisfy both."""
    return lambda e: first(e) and second(e)


UTF8, PID1 = {"SpecificCharacterSet": "ISO_IR 192"}, {"PatientID": "PID-1"}
STUDY_QUERIES = {  # id: (model, matching keys, the studies they should find)
    "S-name-Doe*": ("S", {"PatientName": "Doe*"}, named("Doe")),
    "S-name-doe*-case-sensitive": ("S", {"PatientName": "doe*"}, named("doe")),
    "S-name-utf8-Müller*": ("S", {**UTF8, "PatientName": "Müller*"}, named("Müller")),
    "S-date-closed": ("S", {"StudyDate": "20240101-20240103"}, dated("20240101", "20240103")),
    "S-date-open-end": ("S", {"StudyDate": "20240104-"}, dated(low="20240104")),
    "S-date-open-start": ("S", {"StudyDate": "-20240101"}, dated(high="20240101")),
    "S-name-and-date": (
        "S",
        {"PatientName": "Doe*", "StudyDate": "20240104-"},
        both(named("Doe"), dated("20240104")),
    ),
    "P-date-closed": (
        "P",
        {**PID1, "StudyDate": "20240101-20240103"},
        both(of_patient("PID-1"), dated("20240101", "20240103")),
    ),
    "P-date-open-end": (
        "P",
        {**PID1, "StudyDate": "20240104-"},
        both(of_patient("PID-1"), dated("20240104")),
    ),
}


@pytest.mark.parametrize(
    ("model", "keys", "wanted"), STUDY_QUERIES.values(), ids=STUDY_QUERIES.keys()
)
def test_findscu_study_level(
    qr: QRArchive, tmp_path: Path, model: str, keys: dict[str, str], wanted: Predicate
) -> None:
    """STUDY-level findscu: wild card names (case-sensitive), closed and open date ranges."""
    keys = {**keys, "StudyInstanceUID": ""}
    result, responses = findscu(qr, tmp_path / "rsp", model, "STUDY", keys)
    assert result.returncode == 0, result.stderr
    assert statuses(result)[-1] == 0x0000
    expected = {e.study_uid for e in qr.entries if wanted(e)}
    assert expected, "a query that should match nothing proves little"
    assert found(responses, "StudyInstanceUID") == expected
    assert len(responses) == len(expected)
    assert found(responses, "QueryRetrieveLevel") == {"STUDY"}


def test_findscu_patient_root_patient_level_name_wild_card(qr: QRArchive, tmp_path: Path) -> None:
    """-P at PATIENT level: "Doe*" finds Doe^Jane and not doe^john."""
    keys = {"PatientName": "Doe*", "PatientID": ""}
    result, responses = findscu(qr, tmp_path / "rsp", "P", "PATIENT", keys)
    assert result.returncode == 0, result.stderr
    assert found(responses, "PatientID") == {e.patient_id for e in qr.entries if named("Doe")(e)}
    assert found(responses, "PatientName") == {"Doe^Jane"}


def values_of(ds: Dataset, keyword: str) -> set[str]:
    """A key's values, whatever its multiplicity."""
    value = ds.get(keyword, "")
    return {str(value)} if isinstance(value, str) else {str(item) for item in value}


def test_findscu_study_level_return_keys(qr: QRArchive, tmp_path: Path) -> None:
    """Each response carries the keys asked for, with values computed from the study's entries."""
    returned = ["PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy"]
    counts = ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
    keys = dict.fromkeys(["StudyInstanceUID", *returned, *counts], "")
    result, responses = findscu(qr, tmp_path / "rsp", "S", "STUDY", {"PatientName": "Doe*", **keys})
    assert result.returncode == 0, result.stderr
    assert len(responses) == len({e.study_uid for e in qr.entries if named("Doe")(e)})
    for response in responses:
        study = [e for e in qr.entries if e.study_uid == response.StudyInstanceUID]
        assert response.PatientName == study[0].patient_name
        assert response.PatientID == study[0].patient_id
        assert response.AccessionNumber == study[0].accession
        assert response.StudyDate == study[0].study_date
        assert values_of(response, "ModalitiesInStudy") == {e.modality for e in study}
        assert response.NumberOfStudyRelatedSeries == len({e.series_uid for e in study})
        assert response.NumberOfStudyRelatedInstances == len(study)


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("model", ["P", "S"])
def test_findscu_series_level(qr: QRArchive, tmp_path: Path, model: str, modality: str) -> None:
    """SERIES level under one study (and its patient for -P), filtered by Modality."""
    study = study_of(qr, "ACC-101")
    upper = {"PatientID": study.patient_id} if model == "P" else {}
    keys = {**upper, "StudyInstanceUID": study.study_uid, "Modality": modality}
    keys |= {"SeriesInstanceUID": "", "NumberOfSeriesRelatedInstances": ""}
    result, responses = findscu(qr, tmp_path / "rsp", model, "SERIES", keys)
    assert result.returncode == 0, result.stderr
    in_series = [e for e in qr.entries if e.study_uid == study.study_uid and e.modality == modality]
    assert found(responses, "SeriesInstanceUID") == {e.series_uid for e in in_series}
    assert len(responses) == len({e.series_uid for e in in_series})
    assert found(responses, "Modality") == {modality}
    for response in responses:
        count = sum(e.series_uid == response.SeriesInstanceUID for e in in_series)
        assert response.NumberOfSeriesRelatedInstances == count


def test_findscu_patient_root_study_without_patient_id_fails(qr: QRArchive, tmp_path: Path) -> None:
    """PS3.4 C.4.1.2.1: -P at STUDY level without PatientID answers 0xA900; pacsd goes on.

    findscu 3.6.7 exits 0 whatever the status: the failure shows in its output only.
    """
    keys = {"StudyInstanceUID": ""}
    result, responses = findscu(qr, tmp_path / "bad", "P", "STUDY", keys, calling="NOPATIENTID")
    output = result.stdout + result.stderr
    assert statuses(result) == [0xA900], output
    assert "PatientID" in output  # the Error Comment, as findscu prints it
    assert responses == []
    assert logged_operation(qr.server, "C-FIND", "NOPATIENTID")["status"] == "0xA900"

    echo = run("echoscu", *at_pacsd(qr.server))
    assert echo.returncode == 0, echo.stderr
    keys = {"PatientID": "PID-2", "StudyInstanceUID": ""}
    result, responses = findscu(qr, tmp_path / "good", "P", "STUDY", keys)
    assert statuses(result)[-1] == 0x0000, result.stderr
    wanted = {e.study_uid for e in qr.entries if e.patient_id == "PID-2"}
    assert found(responses, "StudyInstanceUID") == wanted


# C-GET -----------------------------------------------------------------------------------------


def retrieve_keys(study: Entry, level: str) -> tuple[dict[str, str], Predicate]:
    """Unique keys down to `level` for the study's first series, and the instances they cover."""
    if level == "STUDY":
        return {"StudyInstanceUID": study.study_uid}, lambda e: e.study_uid == study.study_uid
    keys = {
        "PatientID": study.patient_id,
        "StudyInstanceUID": study.study_uid,
        "SeriesInstanceUID": study.series_uid,
    }
    return keys, lambda e: e.series_uid == study.series_uid


@pytest.mark.parametrize(("model", "level"), [("S", "STUDY"), ("P", "SERIES")])
def test_getscu_receives_identical_instances(
    qr: QRArchive, tmp_path: Path, model: str, level: str
) -> None:
    """getscu -S of one study (CT and MR), -P of one series: the instances arrive unchanged."""
    keys, wanted = retrieve_keys(study_of(qr, "ACC-101"), level)
    folder = tmp_path / "received"
    folder.mkdir()
    options = ["-v", "-od", str(folder), *key_options({"QueryRetrieveLevel": level, **keys})]
    calling = f"GET{level}"
    result = run("getscu", *at_pacsd(qr.server, f"-{model}", *options, calling=calling))
    # getscu 3.6.7 may crash once everything arrived; count what came (docs/dicom-notes.md).
    expected = {e.sop_instance_uid for e in qr.entries if wanted(e)}
    assert_same_as_stored(qr, datasets_in(folder), expected)
    line = logged_operation(qr.server, "C-GET", calling)
    assert (line["status"], line["completed"]) == ("0x0000", len(expected)), result.stderr


# C-MOVE ----------------------------------------------------------------------------------------


def movescu(
    qr: QRArchive, destination: str, level: str, keys: dict[str, str], calling: str = CALLING
) -> subprocess.CompletedProcess[str]:
    """movescu -S (Study Root) asking pacsd to send to `destination`."""
    options = ["-S", "-d", "-aem", destination, *key_options({"QueryRetrieveLevel": level, **keys})]
    return run("movescu", *at_pacsd(qr.server, *options, calling=calling))


def test_movescu_study_to_storescp(qr: QRArchive, destination: StoreSCP) -> None:
    """movescu -S of a study (CT and MR series) to storescp: every instance, unchanged."""
    study = study_of(qr, "ACC-101")
    result = movescu(qr, DESTINATION, "STUDY", {"StudyInstanceUID": study.study_uid})
    assert result.returncode == 0, result.stderr
    assert statuses(result)[-1] == 0x0000
    expected = {e.sop_instance_uid for e in qr.entries if e.study_uid == study.study_uid}
    assert_same_as_stored(qr, datasets_in(destination.folder), expected)


def test_movescu_image_level_uid_list(qr: QRArchive, destination: StoreSCP) -> None:
    """IMAGE level with a list of SOP Instance UIDs (PS3.4 C.2.2.2.2): just those arrive."""
    study = study_of(qr, "ACC-101")
    in_series = sorted(e.sop_instance_uid for e in qr.entries if e.series_uid == study.series_uid)
    wanted = in_series[:2]
    assert len(in_series) > len(wanted)
    keys = {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": study.series_uid}
    result = movescu(qr, DESTINATION, "IMAGE", {**keys, "SOPInstanceUID": "\\".join(wanted)})
    assert result.returncode == 0, result.stderr
    assert statuses(result)[-1] == 0x0000
    assert_same_as_stored(qr, datasets_in(destination.folder), set(wanted))


def test_movescu_to_an_unknown_ae_fails_with_a801(qr: QRArchive, destination: StoreSCP) -> None:
    """A destination missing from the peer table: 0xA801 Move Destination Unknown, nothing sent."""
    study = study_of(qr, "ACC-101")
    keys = {"StudyInstanceUID": study.study_uid}
    result = movescu(qr, "NOBODY", "STUDY", keys, calling="TONOBODY")
    assert result.returncode != 0
    assert statuses(result) == [0xA801], result.stderr
    assert "MoveDestinationUnknown" in result.stderr
    assert logged_operation(qr.server, "C-MOVE", "TONOBODY")["status"] == "0xA801"
    assert datasets_in(destination.folder) == {}
