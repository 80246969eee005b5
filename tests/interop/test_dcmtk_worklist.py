"""Modality Worklist interoperability: DCMTK's `findscu -W` against pacsd, as a modality asks.

The worklist is tests/worklist_data.PLAN, added with `pacsd worklist add`; the expected steps
are computed from PLAN here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from tests import worklist_data
from tests.harness import PacsdProcess, pacsd_command

pytestmark = pytest.mark.usefixtures("dcmtk")
# DCMTK leaves Nagle on unless told; it costs ~40 ms per exchange (docs/dicom-notes.md,
# "Sockets and measurement").
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SPS = "ScheduledProcedureStepSequence[0]"


def test_findscu_worklist_query_returns_the_scheduled_steps(
    server: PacsdProcess, tmp_path: Path
) -> None:
    items = worklist_data.write_json(worklist_data.items(), tmp_path / "items.json")
    added = pacsd_command("worklist", "add", "--config", str(server.config_path), str(items))
    assert added.returncode == 0, added.stderr
    folder = tmp_path / "responses"
    folder.mkdir()
    keys = [
        f"{SPS}.ScheduledStationAETitle=MR01",
        f"{SPS}.ScheduledProcedureStepStartDate=20261130-20261201",
        f"{SPS}.ScheduledProcedureStepStartTime",
        f"{SPS}.Modality",
        f"{SPS}.ScheduledProcedureStepID",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
    ]
    command = ["findscu", "-W", "-X", "-od", str(folder), "-aet", "MODALITY", "-aec", "PACSD"]
    command += [option for key in keys for option in ("-k", key)]
    result = subprocess.run(
        [*command, server.host, str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    responses = [dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]
    steps = {
        (str(ds.PatientID), str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
        for ds in responses
    }
    expected = {
        (step.patient_id, step.step_id)
        for step in worklist_data.PLAN
        if step.station == "MR01" and "20261130" <= step.date <= "20261201"
    }
    assert expected  # the plan has such steps
    assert steps == expected
    names = {str(ds.PatientName) for ds in responses}
    assert "Müller^Jürgen" in names  # stored in UTF-8, decoded by DCMTK from the response
