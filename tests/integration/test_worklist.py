"""Modality Worklist: `pacsd worklist add/list/remove` and worklist C-FIND from a pynetdicom SCU.

The worklist is tests/worklist_data.PLAN, added with the CLI before the server starts; every
expected result is computed from PLAN here, with plain Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE

from tests import worklist_data
from tests.conftest import _backends, index_url
from tests.harness import PacsdProcess, base_config, pacsd_command
from tests.qr_scu import collect, qr_association
from tests.worklist_data import PLAN, Step

MWL_FIND = "1.2.840.10008.5.1.4.31"
VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Worklist:
    """A running pacsd whose worklist holds PLAN."""

    server: PacsdProcess


def _policies() -> list[dict[str, Any]]:
    everything = ["verification", "storage", "query-retrieve", "worklist"]
    return [
        {"name": "no-class", "match": {"calling_ae": "NOCLASS"}, "sop_classes": ["verification"]},
        {
            "name": "no-worklist-operation",
            "match": {"calling_ae": "NOWL"},
            "sop_classes": everything,
            "operations": ["echo", "store", "find"],
        },
        {"name": "accept-all", "sop_classes": everything},
    ]  # fmt: skip


@pytest.fixture(scope="module", params=_backends())
def worklist(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worklist]:
    root = tmp_path_factory.mktemp("worklist-server")
    with index_url(request.param, root) as url:
        server = PacsdProcess.from_config(root, base_config(root, url, policies=_policies()))
        items = worklist_data.write_json(worklist_data.items(), root / "items.json")
        added = pacsd_command("worklist", "add", "--config", str(server.config_path), str(items))
        assert added.returncode == 0, added.stderr
        server.start()
        try:
            yield Worklist(server)
        finally:
            server.stop()


def query(ds: Dataset | None = None, step: Dataset | None = None, **keys: str) -> Dataset:
    """A worklist identifier: `keys` at the top level, `step` as the one SPS query item."""
    ds = ds or Dataset()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        setattr(ds, keyword, keys.get(keyword, ""))
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    item = step or Dataset()
    for keyword in ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepID"):
        if keyword not in item:
            setattr(item, keyword, "")
    for keyword in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):
        if keyword not in item:
            setattr(item, keyword, "")
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def step_query(**keys: str) -> Dataset:
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return item


def find_worklist(worklist: Worklist, ds: Dataset, calling: str = "MODALITY") -> Any:
    with qr_association(worklist.server, [MWL_FIND], calling=calling) as assoc:
        return collect(assoc.send_c_find(ds, MWL_FIND))


def found_steps(found: Any) -> set[tuple[str, str]]:
    """(Patient ID, Scheduled Procedure Step ID) of each response; each holds one step."""
    steps = set()
    for identifier in found.pending():
        [sps] = identifier.ScheduledProcedureStepSequence
        steps.add((str(identifier.PatientID), str(sps.ScheduledProcedureStepID)))
    return steps


def expected(predicate: Callable[[Step], bool]) -> set[tuple[str, str]]:
    return {(step.patient_id, step.step_id) for step in PLAN if predicate(step)}


def _instant(step: Step) -> str:
    return step.date + step.time


CASES: dict[str, tuple[Dataset, Callable[[Step], bool]]] = {
    "universal": (query(), lambda s: True),
    "station and day, as a modality asks": (
        query(step=step_query(
            ScheduledStationAETitle="CT01", ScheduledProcedureStepStartDate="20261130"
        )),
        lambda s: s.station == "CT01" and s.date == "20261130",
    ),
    "modality": (query(step=step_query(Modality="MR")), lambda s: s.modality == "MR"),
    "date range": (
        query(step=step_query(ScheduledProcedureStepStartDate="20261130-20261201")),
        lambda s: "20261130" <= s.date <= "20261201",
    ),
    "open date range": (
        query(step=step_query(ScheduledProcedureStepStartDate="20261201-")),
        lambda s: s.date >= "20261201",
    ),
    "date and time ranges combine (C.2.2.2.5)": (
        query(step=step_query(
            ScheduledProcedureStepStartDate="20261130-20261201",
            ScheduledProcedureStepStartTime="0900-0800",
        )),
        lambda s: "202611300900" <= _instant(s)[:12] <= "202612010800",
    ),
    "patient name wildcard, case-sensitive": (
        query(PatientName="Doe*"), lambda s: s.patient_name.startswith("Doe")
    ),
    "lower case does not match": (query(PatientName="doe*"), lambda s: False),
    "accession number": (query(AccessionNumber="WACC-2"), lambda s: s.accession == "WACC-2"),
    "requested procedure ID": (
        query(RequestedProcedureID="RP-5"), lambda s: s.procedure_id == "RP-5"
    ),
    "step ID and station": (
        query(step=step_query(ScheduledProcedureStepID="SPS-2", ScheduledStationAETitle="CT01")),
        lambda s: s.step_id == "SPS-2" and s.station == "CT01",
    ),
    "ISO_IR 100 query, UTF-8 item": (
        query(Dataset(), SpecificCharacterSet="ISO_IR 100", PatientName="Müller*"),
        lambda s: s.patient_name.startswith("Müller"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_worklist_queries_return_the_scheduled_steps(worklist: Worklist, case: str) -> None:
    ds, predicate = CASES[case]
    found = find_worklist(worklist, ds)
    assert found.final_status == 0x0000
    assert found_steps(found) == expected(predicate)


def test_requested_keys_come_back_and_only_those(worklist: Worklist) -> None:
    ds = query(PatientBirthDate="", RequestedProcedureDescription="", PatientID="W-2")
    ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription = ""
    [identifier] = find_worklist(worklist, ds).pending()
    assert identifier.PatientName == "Smith^John"
    assert identifier.PatientBirthDate == "19800101"
    assert identifier.RequestedProcedureDescription == "Procedure RP-2"
    assert identifier.StudyInstanceUID  # stored with the item
    assert "ReferringPhysicianName" not in identifier  # stored, not asked for
    [sps] = identifier.ScheduledProcedureStepSequence
    assert sps.ScheduledProcedureStepDescription == "Step SPS-1 of RP-2"
    assert sps.ScheduledStationAETitle == "MR01"
    assert sps.ScheduledProcedureStepStartTime == "101500"
    assert "ScheduledPerformingPhysicianName" not in sps


def test_response_carries_the_character_set_of_its_values(worklist: Worklist) -> None:
    found = find_worklist(worklist, query(PatientID="W-4"))
    [identifier] = found.pending()
    assert str(identifier.PatientName) == "Müller^Jürgen"
    assert identifier.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")


def test_a_peer_without_the_worklist_operation_is_refused(worklist: Worklist) -> None:
    found = find_worklist(worklist, query(), calling="NOWL")
    assert found.final_status == 0x0124
    assert found.pending() == []


def test_a_peer_not_granted_the_worklist_class_cannot_negotiate_it(worklist: Worklist) -> None:
    ae = AE(ae_title="NOCLASS")
    ae.add_requested_context(MWL_FIND)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(worklist.server.host, worklist.server.port, ae_title="PACSD")
    try:
        assert assoc.is_established
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assert accepted == {VERIFICATION}
    finally:
        assoc.release()


# The CLI ------------------------------------------------------------------------------------


def worklist_cli(config: Path, *args: str) -> Any:
    return pacsd_command("worklist", *args, "--config", str(config))


@pytest.fixture
def config(database_url: str, tmp_path: Path) -> Path:
    return PacsdProcess.from_config(tmp_path, base_config(tmp_path, database_url)).config_path


def test_add_splits_steps_lists_and_removes(config: Path, tmp_path: Path) -> None:
    items = worklist_data.items()
    dicom_file = worklist_data.write_dicom(items[0], tmp_path / "two-steps.dcm")
    added = worklist_cli(config, "add", str(dicom_file))
    assert added.returncode == 0, added.stderr
    assert added.stdout.count("added ") == len(worklist_data.TWO_STEP_ITEM)
    listed = worklist_cli(config, "list", "--json")
    documents = [Dataset.from_json(item) for item in json.loads(listed.stdout)]
    assert [len(d.ScheduledProcedureStepSequence) for d in documents] == [1, 1]
    assert {d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in documents} == {
        "SPS-1",
        "SPS-2",
    }
    table = worklist_cli(config, "list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "DATE", "TIME"]
    first_id = table[1].split()[0]
    removed = worklist_cli(config, "remove", first_id, "9999")
    assert removed.returncode == 1  # 9999 does not exist, and the output says so
    assert f"removed {first_id}" in removed.stdout
    assert "no item 9999" in removed.stdout
    assert len(worklist_cli(config, "list").stdout.splitlines()) == 2  # header and one item


def test_a_duplicate_step_is_refused_and_nothing_of_the_file_added(
    config: Path, tmp_path: Path
) -> None:
    items = worklist_data.items()
    first = worklist_data.write_json(items[:1], tmp_path / "a.json")
    assert worklist_cli(config, "add", str(first)).returncode == 0
    both = worklist_data.write_json(items[:2], tmp_path / "b.json")  # items[0] again, and a new one
    refused = worklist_cli(config, "add", str(both))
    assert refused.returncode == 1
    assert "already in the worklist" in refused.stderr
    assert len(worklist_cli(config, "list").stdout.splitlines()) == 1 + 2  # still the first two


def test_an_incomplete_item_is_refused_naming_what_is_missing(config: Path, tmp_path: Path) -> None:
    item = worklist_data.items()[1]
    del item.PatientID
    del item.ScheduledProcedureStepSequence[0].ScheduledStationAETitle
    refused = worklist_cli(
        config, "add", str(worklist_data.write_json([item], tmp_path / "x.json"))
    )
    assert refused.returncode == 1
    assert "PatientID" in refused.stderr
    assert "ScheduledProcedureStepSequence[1].ScheduledStationAETitle" in refused.stderr
    not_json = tmp_path / "notes.txt"
    not_json.write_text("hello", encoding="utf-8")
    refused = worklist_cli(config, "add", str(not_json))
    assert refused.returncode == 1
    assert "neither DICOM JSON nor a DICOM file" in refused.stderr


def test_a_missing_study_instance_uid_is_generated(config: Path, tmp_path: Path) -> None:
    item = worklist_data.items()[1]
    del item.StudyInstanceUID
    added = worklist_cli(config, "add", str(worklist_data.write_json([item], tmp_path / "x.json")))
    assert added.returncode == 0, added.stderr
    assert "StudyInstanceUID generated" in added.stdout
    [document] = json.loads(worklist_cli(config, "list", "--json").stdout)
    assert Dataset.from_json(document).StudyInstanceUID.is_valid
