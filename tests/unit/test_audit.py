"""Audit messages (PS3.15 A.5): codes, outcomes and participants; the file sink and the trail."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest

from pacsd import audit
from pacsd.audit import events, messages, transfers
from pacsd.audit.sinks import FailureReport, FileSink
from pacsd.handle import ClientHandle
from pacsd.settings import Settings

SOURCE = messages.AuditSource("PACSD@host", "Hospital")
CT = "1.2.840.10008.5.1.4.1.1.2"


def handle(calling: str = "CT1", address: str = "10.1.2.3") -> ClientHandle:
    """A client handle as negotiation leaves it for an accepted association."""
    client = ClientHandle.connect(address, 40000)
    client.calling_ae_title, client.called_ae_title = calling, "PACSD"
    return client


def code(value: dict[str, str]) -> tuple[str, str, str]:
    """(csd-code, codeSystemName, originalText)."""
    return value["csd-code"], value["codeSystemName"], value["originalText"]


def test_event_and_type_codes_are_the_dcm_codes_of_ps3_16() -> None:
    """CID 400/401/402/404 codes, code system DCM (RFC-3881 for the patient number)."""
    assert code(messages.APPLICATION_ACTIVITY) == ("110100", "DCM", "Application Activity")
    assert code(messages.INSTANCES_TRANSFERRED) == ("110104", "DCM", "DICOM Instances Transferred")
    assert code(messages.STUDY_DELETED) == ("110105", "DCM", "DICOM Study Deleted")
    assert code(messages.QUERY) == ("110112", "DCM", "Query")
    assert code(messages.SECURITY_ALERT) == ("110113", "DCM", "Security Alert")
    assert code(messages.USER_AUTHENTICATION) == ("110114", "DCM", "User Authentication")
    assert code(messages.APPLICATION_START)[0] == "110120"
    assert code(messages.APPLICATION_STOP)[0] == "110121"
    assert (code(messages.LOGIN)[0], code(messages.LOGOUT)[0]) == ("110122", "110123")
    assert code(messages.NODE_AUTHENTICATION)[0] == "110126"
    assert code(messages.SECURITY_CONFIGURATION)[0] == "110129"
    assert code(messages.ROLE_SOURCE)[0] == "110153"
    assert code(messages.ROLE_DESTINATION)[0] == "110152"
    assert code(messages.ID_STUDY_INSTANCE_UID)[0] == "110180"
    assert code(messages.ID_PATIENT_NUMBER) == ("2", "RFC-3881", "Patient Number")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(0x0000, 0), (0xFE00, 0), (0xB000, 4), (0xA700, 4), (0xA900, 4), (0x0111, 4),
     (0x0124, 4), (0xA801, 4), (0x0110, 8), (0xC000, 8)],
)  # fmt: skip
def test_dimse_status_maps_to_event_outcome_indicator(status: int, outcome: int) -> None:
    """Success and cancel 0; warnings and refusals a peer may retry 4; processing failure 8."""
    assert messages.outcome_of_status(status) == outcome


def test_audit_message_has_the_schema_elements_and_a_utc_time() -> None:
    """EventIdentification, ActiveParticipant, AuditSourceIdentification, objects, UTC 'Z'."""
    message = messages.audit_message(
        messages.QUERY,
        messages.EXECUTE,
        messages.SUCCESS,
        SOURCE,
        [messages.application_entity("CT1", True, "10.1.2.3", role=messages.ROLE_SOURCE)],
        objects=[messages.query_object(CT, b"\x08\x00\x52\x00", "1.2.840.10008.1.2.1", "STUDY")],
    )
    identification = message["EventIdentification"]
    assert identification["EventActionCode"] == "E"
    assert identification["EventOutcomeIndicator"] == 0
    assert identification["EventDateTime"].endswith("Z")
    assert "EventTypeCode" not in identification
    (participant,) = message["ActiveParticipant"]
    assert participant == {
        "UserID": "CT1",
        "AlternativeUserID": "AETITLES=CT1",
        "UserIsRequestor": True,
        "NetworkAccessPointID": "10.1.2.3",
        "NetworkAccessPointTypeCode": "2",
        "RoleIDCode": [messages.ROLE_SOURCE],
    }
    assert message["AuditSourceIdentification"][0]["AuditEnterpriseSiteID"] == "Hospital"
    (query,) = message["ParticipantObjectIdentification"]
    assert query["ParticipantObjectTypeCodeRole"] == 24
    assert base64.b64decode(query["ParticipantObjectQuery"]) == b"\x08\x00\x52\x00"
    detail = query["ParticipantObjectDetail"][0]
    assert detail["type"] == "TransferSyntax"
    assert base64.b64decode(detail["value"]) == b"1.2.840.10008.1.2.1"


def test_stored_instances_make_one_message_per_study_with_counts_per_sop_class() -> None:
    """C-STOREs aggregate per study, action and outcome; the patient is a ParticipantObject."""
    client = handle()
    aggregates = transfers.StoreAggregates()
    new = transfers.StudyKey("1.2.3", "PAT1", messages.CREATE, 0)
    refused = transfers.StudyKey("1.2.3", "PAT1", messages.CREATE, 4)
    for _ in range(3):
        aggregates.add(client, new, CT, 0)
    aggregates.add(client, new, "1.2.840.10008.5.1.4.1.1.4", 0)
    aggregates.add(client, refused, CT, 0xA900)
    built = list(transfers.stored_messages(SOURCE, "PACSD", client, aggregates.take(client)))
    assert aggregates.take(client) == {}
    assert [m["EventIdentification"]["EventOutcomeIndicator"] for m in built] == [0, 4]
    assert all(m["EventIdentification"]["EventActionCode"] == "C" for m in built)
    study, patient = built[0]["ParticipantObjectIdentification"]
    assert study["ParticipantObjectID"] == "1.2.3"
    assert study["SOPClass"] == [
        {"UID": CT, "NumberOfInstances": 3},
        {"UID": "1.2.840.10008.5.1.4.1.1.4", "NumberOfInstances": 1},
    ]
    assert (patient["ParticipantObjectID"], patient["ParticipantObjectTypeCodeRole"]) == ("PAT1", 1)
    assert "0xA900 x1" in built[1]["EventIdentification"]["EventOutcomeDescription"]
    roles = [p["RoleIDCode"][0]["csd-code"] for p in built[0]["ActiveParticipant"]]
    assert roles == ["110153", "110152"]  # the modality sent, pacsd received


def test_rejected_association_is_a_security_alert_naming_the_rule() -> None:
    """Security Alert / Node Authentication, outcome 4, the peer as requestor and object."""
    client = handle("INTRUDER")
    message = events.association_rejected(SOURCE, "PACSD", client, "no rule matched", "deny")
    identification = message["EventIdentification"]
    assert code(identification["EventID"])[0] == "110113"
    assert [c["csd-code"] for c in identification["EventTypeCode"]] == ["110126"]
    assert identification["EventOutcomeIndicator"] == 4
    assert identification["EventOutcomeDescription"] == (
        "association rejected: rule deny: no rule matched"
    )
    requestors = [p for p in message["ActiveParticipant"] if p["UserIsRequestor"]]
    assert [(p["UserID"], p["NetworkAccessPointID"]) for p in requestors] == [
        ("INTRUDER", "10.1.2.3")
    ]
    (node,) = message["ParticipantObjectIdentification"]
    assert node["ParticipantObjectID"] == "INTRUDER@10.1.2.3:40000"


def test_login_names_the_verified_user_and_logout_closes_the_session() -> None:
    """User Authentication / Login with UserName when user identity negotiation gave one."""
    client = handle()
    client.username, client.user_identity_type, client.user_verified = "alice", 2, True
    login = events.login(SOURCE, "PACSD", client, messages.SUCCESS)
    assert login["ActiveParticipant"][0]["UserName"] == "alice"
    assert (
        "user identity type 2 verified" in login["EventIdentification"]["EventOutcomeDescription"]
    )
    client.state = "aborted"
    logout = events.logout(SOURCE, "PACSD", client)
    assert [c["csd-code"] for c in logout["EventIdentification"]["EventTypeCode"]] == ["110123"]


def test_study_deleted_is_action_d_with_study_and_patient() -> None:
    """DICOM Study Deleted (110105), EventActionCode D, the person who ran the command."""
    message = events.study_deleted(
        SOURCE, "PACSD", "1.2.3", "PAT1", {CT: 2}, "fsck --repair: files missing", "operator"
    )
    assert message["EventIdentification"]["EventActionCode"] == "D"
    assert [p["UserID"] for p in message["ActiveParticipant"]] == ["PACSD", "operator"]
    study, patient = message["ParticipantObjectIdentification"]
    assert study["SOPClass"] == [{"UID": CT, "NumberOfInstances": 2}]
    assert patient["ParticipantObjectID"] == "PAT1"


def test_file_sink_creates_a_private_file_and_appends_whole_lines(tmp_path: Path) -> None:
    """Parent folders created, mode 0600, lines from many threads never interleave."""
    path = tmp_path / "deep" / "folder" / "audit.jsonl"
    sink = FileSink(path)
    line = json.dumps({"x": "y" * 5000}).encode() + b"\n"
    writers = [
        threading.Thread(target=lambda: [sink.write(line) for _ in range(50)]) for _ in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    sink.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines == [line] * 200


def test_file_sink_with_fsync_syncs_in_its_own_thread_and_stops_on_close(tmp_path: Path) -> None:
    """audit.fsync: the writer returns at once, a thread of the sink fsyncs, close stops it."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, fsync=True)
    assert sink._syncer is not None
    assert sink._syncer.is_alive()
    for number in range(20):
        sink.write(b'{"n": %d}\n' % number)
    sink.reopen()  # SIGHUP while the syncer may hold a duplicate of the old descriptor
    sink.write(b'{"n": 20}\n')
    sink.close()
    assert not sink._syncer.is_alive()
    assert sink.report.failures == 0
    assert [json.loads(line)["n"] for line in path.read_bytes().splitlines()] == list(range(21))


def test_file_sink_failure_is_counted_not_raised(tmp_path: Path) -> None:
    """An audit file that cannot be opened never breaks the caller; the failure is counted."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    sink = FileSink(blocker / "audit.jsonl")
    sink.write(b"{}\n")
    assert sink.report.failures == 2  # at open, and again at the write that retried it


def test_failure_report_logs_at_most_once_per_interval() -> None:
    """Counted every time, logged once a minute (rate-limited)."""
    report = FailureReport("test")
    for _ in range(5):
        report.failed(OSError("disk full"))
    assert report.failures == 5
    assert report._unreported == 4  # the first was logged, the rest wait for the next report


def test_trail_writes_json_lines_and_nothing_when_disabled(tmp_path: Path) -> None:
    """configure() opens the file; each event is one JSON line; disabled means no file."""
    path = tmp_path / "audit.jsonl"
    settings = Settings(audit={"file": str(path)})
    trail = audit.configure(settings)
    assert trail is not None
    try:
        audit.application_started()
        audit.study_deleted("1.2.3", None, {CT: 1}, "test")
    finally:
        audit.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["EventIdentification"]["EventID"]["csd-code"] for m in lines] == ["110100", "110105"]
    assert audit.current() is None
    audit.configure(Settings(audit={"enabled": False, "file": str(tmp_path / "off.jsonl")}))
    audit.application_started()
    audit.shutdown()
    assert not (tmp_path / "off.jsonl").exists()
