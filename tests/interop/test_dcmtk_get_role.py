"""A C-GET whose requester may not take the SCP role for the storage class (issue 19): the
failure says that, not something about transfer syntaxes. DCMTK's getscu proposes the role
(PS3.7 D.3.3.4); the policy rule here does not grant it (`peer_scp_role: []`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests import datagen
from tests.conftest import ServerFactory
from tests.harness import PacsdProcess
from tests.scu import store_files

pytestmark = pytest.mark.usefixtures("dcmtk")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
NO_ROLE = "requester has no SCP role for CTImageStorage (PS3.7 D.3.3.4)"


def c_get_lines(server: PacsdProcess, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The server's `dimse` lines of C-GETs, once there are `count` of them (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.events("dimse") if line.get("operation") == "C-GET"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_getscu_without_the_scp_role_is_told_so(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """Every sub-operation fails (0xA702); the Error Comment and the log name the missing SCP
    role of CT Image Storage; a rule granting the role gets the instances."""
    rules = [
        {
            "name": "no-role",
            "match": {"calling_ae": "GETSCU"},
            "sop_classes": ["verification", "storage", "query-retrieve"],
            "peer_scp_role": [],
        },
        {
            "name": "others",
            "sop_classes": ["verification", "storage", "query-retrieve"],
            "peer_scp_role": ["storage"],
        },
    ]
    server = pacsd_server(policies=rules)
    files = list(datagen.ct_series(tmp_path / "ct", 2, size=16))
    assert [status for status, _ in store_files(server.host, server.port, files)] == [0, 0]
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def getscu(calling: str, folder: Path) -> subprocess.CompletedProcess[str]:
        folder.mkdir()
        command = ["getscu", "-d", "-S", "-aet", calling, "-aec", "PACSD", "-od", str(folder)]
        command += [server.host, str(server.port)]
        command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, env=DCMTK_ENV, check=False
        )

    refused = getscu("GETSCU", tmp_path / "refused")
    output = refused.stdout + refused.stderr
    assert NO_ROLE in output, output
    assert "syntax" not in output.split(NO_ROLE)[0].rsplit("\n", 1)[-1]
    assert list((tmp_path / "refused").iterdir()) == []
    [line] = c_get_lines(server, 1)
    assert line["status"] == "0xA702"
    assert line["failure_reasons"] == {NO_ROLE: 2}
    assert line["error_comment"] == NO_ROLE

    granted = getscu("VIEWER", tmp_path / "granted")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert len(list((tmp_path / "granted").iterdir())) == 2
