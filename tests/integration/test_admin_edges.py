"""What a new administrator meets with the `pacsd` commands (issue 19, "Sharp edges"): one
database whatever the working directory, the example worklist item, the listeners
`config check` reports, and the port-in-use error. Real pacsd processes, real commands.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.tls_certs import make_pki

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "examples" / "worklist-item.json"
EXAMPLE_DICOM_JSON = REPOSITORY / "examples" / "worklist-item.dicom.json"
pacsd = pacsd_command


def relative_config(folder: Path) -> dict[str, Any]:
    """A server configuration whose database, storage and audit file are relative paths."""
    config = base_config(folder)
    config["database"] = {"url": "sqlite:///var/pacsd.sqlite"}
    config["storage"] = {"root": "var/storage", "min_free_space": "1MB"}
    config["audit"] = {"file": "var/audit.jsonl"}
    return config


@pytest.fixture
def etc_server(tmp_path: Path) -> Iterator[PacsdProcess]:
    """pacsd serving /etc-like folder's pacsd.yaml, whose paths are relative."""
    server = PacsdProcess.from_config(tmp_path / "etc", relative_config(tmp_path / "etc"))
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def worklist_patient_ids(server: PacsdProcess) -> list[str]:
    """The Patient IDs a modality's worklist C-FIND returns (every item)."""
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    assert assoc.is_established
    query = Dataset()
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    query.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = ""
    try:
        found = [
            str(identifier.PatientID)
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind)
            if status is not None and int(status.Status) in (0xFF00, 0xFF01)
        ]
    finally:
        assoc.release()
    return found


def test_admin_commands_use_the_database_next_to_the_config_file(
    etc_server: PacsdProcess, tmp_path: Path
) -> None:
    """`cd /srv/other && pacsd worklist add --config /etc/pacsd/pacsd.yaml`: the item goes
    into the server's database (relative paths resolve against the file's folder), both
    commands say which database and storage root they used, and the modality sees the item."""
    etc = etc_server.config_path.parent
    other = tmp_path / "other"
    other.mkdir()
    config = str(etc_server.config_path)
    added = pacsd("worklist", "add", "--config", config, str(EXAMPLE), cwd=other)
    assert added.returncode == 0, added.stderr
    var = etc / "var"
    used = f"database sqlite:///{var / 'pacsd.sqlite'}, storage root {var / 'storage'}"
    assert used in added.stderr
    assert not (other / "var").exists(), "nothing was made in the working directory"

    relative = os.path.relpath(etc_server.config_path, other)
    listed = pacsd("worklist", "list", "--config", relative, cwd=other)
    assert listed.returncode == 0, listed.stderr
    assert "PID-1001" in listed.stdout
    assert used in listed.stderr
    assert worklist_patient_ids(etc_server) == ["PID-1001"]
    for command in (("mpps", "list"), ("ups", "list"), ("commitment", "list"), ("db", "upgrade")):
        result = pacsd(*command, "--config", str(etc_server.config_path), cwd=other)
        assert result.returncode == 0, (command, result.stderr)
        assert used in result.stderr, command
    printed = pacsd("print", "list", "--config", str(etc_server.config_path), cwd=other)
    assert f"print folder {etc / 'var' / 'storage' / 'print'}" in printed.stderr


def test_embedded_default_and_environment_stay_in_the_working_directory(tmp_path: Path) -> None:
    """Without a file `./var` is the working directory's, and `config show` says so; a relative
    PACSD_* override is the working directory's too, next to a file's resolved paths."""
    shown = pacsd("config", "show", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"the working directory, {tmp_path}" in shown.stdout
    assert yaml.safe_load(shown.stdout)["storage"]["root"] == "var/storage"

    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "pacsd.yaml"
    config.write_text(yaml.safe_dump(relative_config(etc)), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    environment = {"PACSD_STORAGE__ROOT": "data"}
    shown = pacsd("config", "show", "--config", str(config), cwd=work, **environment)
    document = yaml.safe_load(shown.stdout)
    assert document["database"]["url"] == f"sqlite:///{etc / 'var' / 'pacsd.sqlite'}"
    assert document["audit"]["file"] == str(etc / "var" / "audit.jsonl")
    assert document["storage"]["root"] == "data"
    assert f"resolved against\n# {etc}" in shown.stdout
    listed = pacsd("worklist", "list", "--config", str(config), cwd=work, **environment)
    assert f"storage root {work / 'data'}" in listed.stderr


def test_worklist_add_takes_the_example_the_keyword_form_and_dicom_json(
    server: PacsdProcess, tmp_path: Path
) -> None:
    """The shipped examples (keyword JSON and DICOM JSON) and a keyword item written by hand
    with two steps are added; the modality finds them."""
    friendly = {
        "PatientName": "Roe^Richard",
        "PatientID": "PID-7",
        "RequestedProcedureID": "RP-7",
        "OtherPatientIDs": ["A-1", "B-2"],
        "ScheduledProcedureStepSequence": [
            {
                "ScheduledStationAETitle": "MR01",
                "ScheduledProcedureStepStartDate": "20260116",
                "ScheduledProcedureStepStartTime": "1100",
                "Modality": "MR",
                "ScheduledProcedureStepID": f"SPS-{number}",
            }
            for number in (1, 2)
        ],
    }
    by_hand = tmp_path / "mine.json"
    by_hand.write_text(json.dumps(friendly), encoding="utf-8")
    config = str(server.config_path)
    for path, count in ((EXAMPLE, 1), (by_hand, 2)):
        added = pacsd("worklist", "add", "--config", config, str(path))
        assert added.returncode == 0, added.stderr
        assert added.stdout.count("added ") == count, added.stdout
    listed = json.loads(pacsd("worklist", "list", "--config", config, "--json").stdout)
    assert len(listed) == 3
    mine = [item for item in listed if item["00100020"]["Value"] == ["PID-7"]]
    assert mine[0]["00101000"]["Value"] == ["A-1", "B-2"]  # a list: several values
    assert sorted(worklist_patient_ids(server)) == ["PID-1001", "PID-7", "PID-7"]
    again = pacsd("worklist", "add", "--config", config, str(EXAMPLE_DICOM_JSON))
    assert again.returncode == 1  # the same item as DICOM JSON: the same step, refused
    assert "already in the worklist" in again.stderr
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    added = pacsd("worklist", "add", str(EXAMPLE_DICOM_JSON), PACSD_DATABASE__URL=other)
    assert added.returncode == 0, added.stderr
    [example] = json.loads(listed_json(other))
    [keyword_example] = [item for item in listed if item["00100020"]["Value"] == ["PID-1001"]]
    del example["0020000D"], keyword_example["0020000D"]  # each got a generated UID
    assert example == keyword_example  # the two shipped examples are one item


def listed_json(database_url: str) -> str:
    """`pacsd worklist list --json` of a database."""
    listed = pacsd("worklist", "list", "--json", PACSD_DATABASE__URL=database_url)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"PatientNam": "Doe^Jane"}', "'PatientNam' is neither a DICOM keyword nor a tag"),
        ('{"PatientName": {"Alphabetic": "Doe"}}', "PatientName: a value, or a list of values"),
        ('{"ScheduledProcedureStepSequence": {"Modality": "CT"}}', "is a sequence"),
        ('["PatientName", "Doe^Jane"]', "not a JSON object of attributes"),
        ("{PatientName: Doe}", "not valid JSON"),
        ("PatientName,PatientID\nDoe^Jane,1\n", "neither DICOM JSON nor a DICOM file"),
    ],
    ids=["typo", "object-value", "sequence-not-list", "not-objects", "yaml", "csv"],
)
def test_worklist_add_says_what_a_wrong_file_should_look_like(
    tmp_path: Path, content: str, problem: str
) -> None:
    """A wrong file: exit 1, one line naming the file and the problem, the expected form and
    the example; no traceback, nothing added."""
    path = tmp_path / "items.json"
    path.write_text(content, encoding="utf-8")
    database = f"sqlite:///{tmp_path / 'index.sqlite'}"
    result = pacsd("worklist", "add", str(path), PACSD_DATABASE__URL=database)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr
    assert problem in result.stderr, result.stderr
    assert '"ScheduledProcedureStepSequence": [{"ScheduledStationAETitle"' in result.stderr
    assert "examples/worklist-item.json" in result.stderr
    assert not (tmp_path / "index.sqlite").exists()


def test_worklist_add_names_missing_keys_and_the_example(tmp_path: Path) -> None:
    """A keyword item without its required keys is refused with their names."""
    path = tmp_path / "item.json"
    path.write_text('{"PatientName": "Doe^Jane"}', encoding="utf-8")
    result = pacsd(
        "worklist", "add", str(path), PACSD_DATABASE__URL=f"sqlite:///{tmp_path / 'i.sqlite'}"
    )
    assert result.returncode == 1
    assert f"{path}: missing or empty: PatientID, RequestedProcedureID" in result.stderr
    assert "(see examples/worklist-item.json)" in result.stderr


def test_config_check_of_a_tls_only_file_reports_the_tls_port(tmp_path: Path) -> None:
    """listen_plain false: `config check` names the TLS port, never the plain one."""
    pki = make_pki(tmp_path / "pki")
    tls = {**pki.listener(), "port": 2762}
    config = {"network": {"listen_plain": False, "port": 11112, "tls": tls}}
    path = tmp_path / "secure.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = pacsd("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (AE PACSD, TLS port 2762)"
    both = {"network": {"port": 4104, "tls": tls}}
    path.write_text(yaml.safe_dump(both), encoding="utf-8")
    assert "ok (AE PACSD, port 4104, TLS port 2762)" in pacsd("config", "check", str(path)).stdout


def test_a_port_in_use_is_named_with_its_listener(tmp_path: Path) -> None:
    """`pacsd serve` on a taken port exits 2 naming the port and the listener (plain or TLS)."""
    pki = make_pki(tmp_path / "pki")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for network, listener in (
            ({"port": port}, "plain"),
            ({"listen_plain": False, "tls": {**pki.listener(), "port": port}}, "TLS"),
        ):
            folder = tmp_path / listener
            config = base_config(folder)
            config["network"] = {**config["network"], **network}
            server = PacsdProcess.from_config(folder, config)
            result = pacsd("serve", "--config", str(server.config_path), cwd=folder)
            assert result.returncode == 2, result.stderr + result.stdout
            message = f"cannot listen on 127.0.0.1:{port} (the {listener} DICOM listener)"
            assert message in result.stderr
            assert "Address already in use" in result.stderr
