"""Interoperability with DCMTK's dcmsend: a folder with odd files among valid ones.

pydicom's RT Dose RLE test files (rtdose_rle.dcm, rtdose_rle_1frame.dcm) say RLE Lossless in
their file meta but hold an Implicit VR data set; dcmsend converts them to Explicit VR and
sends C-STOREs whose command names a SOP class pacsd's context does not have. Whatever pacsd
answers them, dcmsend must go on: every valid instance of the folder is stored and indexed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread

from tests import datagen
from tests.harness import PacsdProcess
from tests.inspect_archive import assert_index_matches_files

pytestmark = pytest.mark.usefixtures("dcmtk")
TOOL_TIMEOUT_S = 120
# docs/dicom-notes.md, "Sockets and measurement": DCMTK leaves Nagle on unless told (~40 ms
# per exchange).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ODD_FILES = ("rtdose_rle.dcm", "rtdose_rle_1frame.dcm")
SENDING = re.compile(r"Sending C-STORE Request \(MsgID (\d+), ([^)]*)\)")
RECEIVED = re.compile(r"Received C-STORE Response \(([^)]*)\)")


@pytest.fixture
def dcmsend() -> str:
    """dcmsend (DCMTK >= 3.6.1): CI fails without it, a laptop skips."""
    found = shutil.which("dcmsend")
    if found is None:
        message = "dcmsend missing: apt-get install dcmtk"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _valid_instances(folder: Path) -> list[Path]:
    """Several generated instances of a few SOP classes, some in a subfolder (+r)."""
    study = datagen.StudyContext(patient_id="PID-DCMSEND")
    files = list(datagen.ct_series(folder, 3, size=16, study=study))
    files.append(datagen.write_part10(datagen.mr_image(study, 4), folder / "mr.dcm"))
    files.append(datagen.write_part10(datagen.basic_text_sr(study, 5), folder / "sub" / "sr.dcm"))
    files.append(datagen.write_part10(datagen.cr_image(study, 6), folder / "sub" / "zz-cr.dcm"))
    return files


def test_dcmsend_folder_with_rt_dose_rle_files_stores_every_valid_instance(
    server: PacsdProcess, database_url: str, dcmsend: str, tmp_path: Path
) -> None:
    """dcmsend sends a folder holding pydicom's two RT Dose RLE test files among six valid
    generated instances over one association: each of its C-STOREs gets a response (PS3.7
    9.3.1.2), dcmsend completes, and every valid instance is stored and indexed."""
    folder = tmp_path / "in"
    valid = _valid_instances(folder)
    test_files = Path(pydicom.data.__file__).parent / "test_files"
    for name in ODD_FILES:
        shutil.copy(test_files / name, folder / name)
    total = len(valid) + len(ODD_FILES)

    command = [
        dcmsend, "-v", "-aet", "DCMSEND", "-aec", "PACSD", "+sd", "+r",
        "-to", "30", "-ta", "30", "-td", "60",
        server.host, str(server.port), str(folder),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env=DCMTK_ENV,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output)

    exchanges = _exchanges(output)
    answers = [answer for _, _, answer in exchanges]
    odd = [
        f"MsgID {mid} ({sent}): {answer}" for mid, sent, answer in exchanges if answer != "Success"
    ]
    print("C-STOREs not answered Success:", odd or "none")
    server_warnings = [line for line in server.lines if line.get("level") == "warning"]
    print("pacsd warnings:", *server_warnings, sep="\n  ")

    assert result.returncode == 0, output
    assert len(exchanges) == total, f"{len(exchanges)} C-STOREs answered of {total}:\n{output}"
    assert None not in answers, f"a C-STORE without its response:\n{output}"
    assert answers.count("Success") >= len(valid), output

    rows = assert_index_matches_files(database_url, server.storage_root)
    indexed = {row["sop_instance_uid"] for row in rows}
    expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in valid}
    assert expected <= indexed, f"not indexed: {expected - indexed}"
    assert {row["calling_ae_title"] for row in rows} == {"DCMSEND"}


def _exchanges(output: str) -> list[tuple[str, str, str | None]]:
    """(Message ID, what dcmsend said it sent, the response's status text or None) for each
    C-STORE in dcmsend -v output, in order."""
    found: list[tuple[str, str, str | None]] = []
    for line in output.splitlines():
        if sending := SENDING.search(line):
            found.append((sending.group(1), sending.group(2), None))
        elif (received := RECEIVED.search(line)) and found and found[-1][2] is None:
            message_id, sent, _ = found[-1]
            found[-1] = (message_id, sent, received.group(1))
    return found
