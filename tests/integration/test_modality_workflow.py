"""The README's modality workflow, run as written: examples/modality_workflow.py against pacsd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import datagen, worklist_data
from tests.conftest import ServerFactory
from tests.harness import pacsd_command

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("retire", [False, True], ids=["keep-items", "retire-completed"])
def test_worklist_mpps_store_commit(
    pacsd_server: ServerFactory, database_url: str, tmp_path: Path, retire: bool
) -> None:
    server = pacsd_server(database_url, worklist={"retire_completed": retire})
    items = worklist_data.write_json(worklist_data.items(), tmp_path / "items.json")
    config = ["--config", str(server.config_path)]
    assert pacsd_command("worklist", "add", *config, str(items)).returncode == 0
    images = [str(path) for path in datagen.ct_series(tmp_path / "ct", 2, size=8)]
    step = worklist_data.PLAN[0]  # CT01, the first step of the day
    command = [sys.executable, str(REPOSITORY / "examples" / "modality_workflow.py")]
    command += ["--host", server.host, "--port", str(server.port), "--station", step.station]
    command += ["--date", step.date, *images]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 C-STORE: 2/2 stored" in result.stdout
    assert "commitment report: 2 committed, 0 failed" in result.stdout
    listed = pacsd_command("mpps", "list", "--json", *config)
    [performed] = json.loads(listed.stdout)
    assert performed["status"] == "COMPLETED"
    assert performed["patient_id"] == step.patient_id
    assert (performed["series_arrived"], performed["instances_stored"]) == (1, 2)
    listed = pacsd_command("worklist", "list", "--json", *config)
    remaining = {
        (item["00100020"]["Value"][0], item["00400100"]["Value"][0]["00400009"]["Value"][0])
        for item in json.loads(listed.stdout)
    }
    performed_step = (step.patient_id, step.step_id)
    assert (performed_step not in remaining) == retire
    assert len(remaining) == len(worklist_data.PLAN) - retire
