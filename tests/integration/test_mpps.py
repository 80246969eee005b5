"""Modality Performed Procedure Step against a real pacsd, with pynetdicom as the modality.

The life cycle N-CREATE (IN PROGRESS) -> N-SET -> N-SET COMPLETED, every refusal of PS3.4 F.7,
N-GET (F.8), and `pacsd mpps list` showing which reported images arrived.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from pacsd.dicom.mpps import COMPLETED, DISCONTINUED, IN_PROGRESS
from tests import datagen
from tests.conftest import ServerFactory
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, pacsd_command
from tests.mpps_data import final_set, n_create, performed_series
from tests.scu import store_files

MPPS = "1.2.840.10008.3.1.2.3.3"
MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.4"
TIMEOUT_S = 30
STATUS_TAG = 0x00400252


def _policies() -> list[dict[str, Any]]:
    everything = ["verification", "storage", "mpps"]
    return [
        {
            "name": "no-mpps",
            "match": {"calling_ae": "NOMPPS"},
            "sop_classes": everything,
            "operations": ["echo", "store"],
        },
        {"name": "accept-all", "sop_classes": everything},
    ]


@pytest.fixture
def server(pacsd_server: ServerFactory, database_url: str) -> PacsdProcess:
    return pacsd_server(database_url, policies=_policies())


@pytest.fixture
def modality(server: PacsdProcess) -> Iterator[Association]:
    yield from _association(server, "CT_1")


def _association(server: PacsdProcess, calling: str) -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(MPPS)
    ae.add_requested_context(MPPS_RETRIEVE)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def created(assoc: Association, attributes: Dataset | None = None) -> str:
    uid = generate_uid(TEST_UID_ROOT)
    status, _ = assoc.send_n_create(attributes or n_create(), MPPS, uid)
    assert status.Status == 0x0000, status
    return uid


def progress_set() -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepDescription = "CT chest, 2 phases"
    return ds


def mpps_list(server: PacsdProcess) -> list[dict[str, Any]]:
    listed = pacsd_command("mpps", "list", "--json", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    steps: list[dict[str, Any]] = json.loads(listed.stdout)
    return steps


def test_life_cycle_in_progress_set_completed_and_the_images_arrive(
    server: PacsdProcess, modality: Association, tmp_path: Any
) -> None:
    study = datagen.StudyContext(patient_id="PID1", patient_name="Doe^Jane")
    paths = list(datagen.ct_series(tmp_path / "ct", 3, size=8, study=study))
    images = tuple(str(datagen_uid(path)) for path in paths)
    uid = created(modality, n_create(study.study_instance_uid))
    status, _ = modality.send_n_set(progress_set(), MPPS, uid)
    assert status.Status == 0x0000
    [step] = mpps_list(server)
    assert (step["status"], step["series_reported"]) == (IN_PROGRESS, 0)

    series = performed_series(study.series_instance_uid, images)
    status, _ = modality.send_n_set(final_set(COMPLETED, series), MPPS, uid)
    assert status.Status == 0x0000
    [step] = mpps_list(server)
    assert step["status"] == COMPLETED
    assert (step["series_reported"], step["series_arrived"]) == (1, 0)  # not sent yet
    assert step["instances_reported"] == 3

    results = store_files(server.host, server.port, paths[:2])
    assert [status for status, _comment in results] == [0, 0]
    [step] = mpps_list(server)
    assert (step["series_arrived"], step["instances_stored"]) == (1, 2)  # one image missing

    status, attributes = modality.send_n_get([], MPPS_RETRIEVE, uid)
    assert status.Status == 0x0000
    assert attributes.PerformedProcedureStepStatus == COMPLETED
    assert attributes.PerformedProcedureStepDescription == "CT chest, 2 phases"
    assert attributes.PerformedSeriesSequence[0].SeriesInstanceUID == study.series_instance_uid


def datagen_uid(path: Any) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize("final", [COMPLETED, DISCONTINUED])
def test_a_finished_step_can_no_longer_be_set(modality: Association, final: str) -> None:
    uid = created(modality)
    status, _ = modality.send_n_set(final_set(final), MPPS, uid)
    assert status.Status == 0x0000
    status, _ = modality.send_n_set(progress_set(), MPPS, uid)
    assert status.Status == 0x0110
    assert status.ErrorID == 0xA710
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"


def test_completing_without_end_time_is_refused_and_the_step_stays_in_progress(
    server: PacsdProcess, modality: Association
) -> None:
    uid = created(modality)
    incomplete = final_set(COMPLETED)
    del incomplete.PerformedProcedureStepEndTime
    status, _ = modality.send_n_set(incomplete, MPPS, uid)
    assert status.Status == 0x0121  # created empty (Type 2), and a final step needs a value
    assert 0x00400251 in [int(tag) for tag in _tags(status)]
    [step] = mpps_list(server)
    assert step["status"] == IN_PROGRESS


def _tags(status: Dataset) -> list[Any]:
    value = status.get("AttributeIdentifierList", [])
    return list(value) if isinstance(value, list) or hasattr(value, "__iter__") else [value]


def test_a_duplicate_n_create_is_refused_with_0111(modality: Association) -> None:
    uid = created(modality)
    status, _ = modality.send_n_create(n_create(), MPPS, uid)
    assert status.Status == 0x0111


def test_missing_type_1_attribute_on_create_is_refused_and_nothing_stored(
    server: PacsdProcess, modality: Association
) -> None:
    attributes = n_create()
    del attributes.PerformedStationAETitle
    status, _ = modality.send_n_create(attributes, MPPS, generate_uid(TEST_UID_ROOT))
    assert status.Status == 0x0120
    assert "PerformedStationAETitle" in status.ErrorComment
    attributes = n_create()
    attributes.PerformedProcedureStepStatus = COMPLETED  # F.7.2.1.3: must start IN PROGRESS
    status, _ = modality.send_n_create(attributes, MPPS, generate_uid(TEST_UID_ROOT))
    assert status.Status == 0x0106
    assert mpps_list(server) == []


def test_a_not_settable_attribute_is_refused_with_its_tag(modality: Association) -> None:
    uid = created(modality)
    change = Dataset()
    change.PatientID = "OTHER"
    status, _ = modality.send_n_set(change, MPPS, uid)
    assert status.Status == 0x0105
    assert 0x00100020 in [int(tag) for tag in _tags(status)]


def test_no_such_step_answers_0112(modality: Association) -> None:
    unknown = generate_uid(TEST_UID_ROOT)
    status, _ = modality.send_n_set(progress_set(), MPPS, unknown)
    assert status.Status == 0x0112
    status, _ = modality.send_n_get([STATUS_TAG], MPPS_RETRIEVE, unknown)
    assert status.Status == 0x0112


def test_n_create_without_a_uid_gets_one_from_pacsd(
    server: PacsdProcess, modality: Association
) -> None:
    status, _ = modality.send_n_create(n_create(), MPPS)
    assert status.Status == 0x0000
    [step] = mpps_list(server)
    assert step["sop_instance_uid"]
    status, attributes = modality.send_n_get([STATUS_TAG], MPPS_RETRIEVE, step["sop_instance_uid"])
    assert status.Status == 0x0000
    assert attributes.PerformedProcedureStepStatus == IN_PROGRESS


def test_n_get_returns_the_requested_attributes_only(modality: Association) -> None:
    uid = created(modality)
    wanted = [STATUS_TAG, 0x00400241, 0x00400250]  # status, station, end date (still empty)
    status, attributes = modality.send_n_get(wanted, MPPS_RETRIEVE, uid)
    assert status.Status == 0x0000
    assert attributes.PerformedProcedureStepStatus == IN_PROGRESS
    assert attributes.PerformedStationAETitle == "CT_1"
    assert attributes.PerformedProcedureStepEndDate == ""
    assert "PatientName" not in attributes


def test_a_peer_without_the_mpps_operation_is_refused(server: PacsdProcess) -> None:
    for assoc in _association(server, "NOMPPS"):
        status, _ = assoc.send_n_create(n_create(), MPPS, generate_uid(TEST_UID_ROOT))
        assert status.Status == 0x0124
    assert mpps_list(server) == []


# Names and texts in the three kinds of character set a modality uses: a single-byte one, UTF-8,
# and ISO 2022 code extensions (PS3.5 H.3.1's example name).
CHARACTER_SETS = {
    "ISO_IR 100": ("ISO_IR 100", "Müller^Jürgen", "Thorax, Übersicht"),
    "ISO_IR 192": ("ISO_IR 192", "Müller^Jürgen=ミュラー", "胸部 CT, Übersicht"),
    "ISO 2022 IR 87": (
        ["", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "胸部ＣＴ",
    ),
}


@pytest.mark.parametrize("charset", list(CHARACTER_SETS))
def test_non_ascii_text_survives_create_set_and_get(
    server: PacsdProcess, modality: Association, charset: str
) -> None:
    """The step is kept as DICOM JSON and read back for each N-SET and N-GET: its names and
    texts come back as sent, in its own character set, after any number of N-SETs."""
    specific, name, description = CHARACTER_SETS[charset]
    attributes = n_create()
    attributes.SpecificCharacterSet = specific
    attributes.PatientName = name
    attributes.PerformedProcedureStepDescription = description
    uid = created(modality, attributes)
    progress = progress_set()
    progress.SpecificCharacterSet = specific
    progress.PerformedProcedureStepDescription = description + " 2"
    status, _ = modality.send_n_set(progress, MPPS, uid)
    assert status.Status == 0x0000
    status, _ = modality.send_n_set(final_set(COMPLETED), MPPS, uid)
    assert status.Status == 0x0000
    status, step = modality.send_n_get([], MPPS_RETRIEVE, uid)
    assert status.Status == 0x0000
    assert step.SpecificCharacterSet == specific
    assert str(step.PatientName) == name
    assert step.PerformedProcedureStepDescription == description + " 2"
    assert step.PerformedProcedureStepStatus == COMPLETED
    [listed] = mpps_list(server)
    assert listed["patient_name"] == name


def test_an_n_set_in_another_character_set_keeps_both_texts(modality: Association) -> None:
    """F.7.2.2.3: a Latin-1 step set with Japanese text is kept in UTF-8, both texts intact."""
    attributes = n_create()
    attributes.SpecificCharacterSet = "ISO_IR 100"
    attributes.PatientName = "Müller^Jürgen"
    uid = created(modality, attributes)
    change = progress_set()
    change.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    change.PerformedProcedureStepDescription = "胸部ＣＴ"
    status, _ = modality.send_n_set(change, MPPS, uid)
    assert status.Status == 0x0000
    status, step = modality.send_n_get([], MPPS_RETRIEVE, uid)
    assert status.Status == 0x0000
    assert step.SpecificCharacterSet == "ISO_IR 192"
    assert str(step.PatientName) == "Müller^Jürgen"
    assert step.PerformedProcedureStepDescription == "胸部ＣＴ"
