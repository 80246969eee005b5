"""The audit trail of a real pacsd: DICOM audit messages (PS3.15 A.5) in a file of their own,
and over syslog (RFC 5424), while the service log stays free of them and of patient data."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests import datagen
from tests.harness import PacsdProcess, audit_records
from tests.qr_scu import Received, collect, identifier, qr_association, storage_scp
from tests.scu import rejection_of, request, store_files

ServerFactory = Callable[..., PacsdProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
POLICIES = [
    {"name": "intruders", "match": {"calling_ae": "INTRUDER"}, "action": "reject",
     "reject_reason": "calling-ae-not-recognised"},
    {"name": "accept-all", "match": {}, "action": "accept",
     "sop_classes": ["verification", "storage", "query-retrieve"], "transfer_syntaxes": ["all"],
     "peer_scp_role": ["storage"]},
]  # fmt: skip


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The audit file's messages, one JSON object per line."""
    return audit_records(path)


def event_id(message: dict[str, Any]) -> str:
    """EventID code of a message."""
    return str(message["EventIdentification"]["EventID"]["csd-code"])


def type_codes(message: dict[str, Any]) -> list[str]:
    """EventTypeCode codes of a message."""
    return [code["csd-code"] for code in message["EventIdentification"].get("EventTypeCode", [])]


def outcome(message: dict[str, Any]) -> int:
    """EventOutcomeIndicator."""
    return int(message["EventIdentification"]["EventOutcomeIndicator"])


def requestor_ae(message: dict[str, Any]) -> str | None:
    """UserID of the requesting DICOM AE (AlternativeUserID AETITLES=...)."""
    for participant in message["ActiveParticipant"]:
        alternative = participant.get("AlternativeUserID", "")
        if participant["UserIsRequestor"] and alternative.startswith("AETITLES="):
            return str(participant["UserID"])
    return None


def role_of(participant: dict[str, Any]) -> str | None:
    """The RoleIDCode code of an ActiveParticipant, if it has one."""
    roles = participant.get("RoleIDCode", [])
    return str(roles[0]["csd-code"]) if roles else None


def summary(message: dict[str, Any]) -> tuple[str, str, str, int]:
    """(EventID, EventActionCode, first EventTypeCode or "", outcome)."""
    identification = message["EventIdentification"]
    types = type_codes(message)
    return (
        event_id(message),
        identification["EventActionCode"],
        types[0] if types else "",
        outcome(message),
    )


def objects(message: dict[str, Any], id_type: str) -> dict[str, dict[str, Any]]:
    """ParticipantObjects of one ID type code, by ParticipantObjectID."""
    return {
        element["ParticipantObjectID"]: element
        for element in message.get("ParticipantObjectIdentification", [])
        if element["ParticipantObjectIDTypeCode"]["csd-code"] == id_type
    }


def make_studies(folder: Path) -> tuple[list[Path], datagen.StudyContext, datagen.StudyContext]:
    """Three CT files: two of patient AUDIT-PAT-A's study, one of AUDIT-PAT-B's."""
    study_a = datagen.StudyContext(patient_id="AUDIT-PAT-A", patient_name="Audit^Alice")
    study_b = datagen.StudyContext(patient_id="AUDIT-PAT-B", patient_name="Audit^Bob")
    paths = [
        *datagen.ct_series(folder / "a", 2, study=study_a),
        *datagen.ct_series(folder / "b", 1, study=study_b),
    ]
    return paths, study_a, study_b


def test_audit_file_records_a_session_in_order_and_the_service_log_does_not(
    pacsd_server: ServerFactory, tmp_path: Path
) -> None:
    """Echo, C-STORE of two studies, C-FIND, C-MOVE, a rejected association, SIGHUP and stop
    give the PS3.15 A.5.3 messages with the right codes, outcomes, AE titles and addresses."""
    paths, study_a, study_b = make_studies(tmp_path / "files")
    received = Received()
    with storage_scp("DEST", received) as dest_port:
        peers = [{"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}]
        server = pacsd_server(policies=POLICIES, peers=peers)
        audit_file = server.config_path.parent / "audit.jsonl"
        assert [status for status, _ in store_files(server.host, server.port, paths, "MODALITY")] \
            == [0, 0, 0]  # fmt: skip
        with qr_association(
            server,
            [
                StudyRootQueryRetrieveInformationModelFind,
                StudyRootQueryRetrieveInformationModelMove,
            ],
        ) as assoc:
            query = identifier("STUDY", PatientID="AUDIT-PAT-A", StudyInstanceUID="")
            found = collect(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            assert found.final_status == 0
            assert len(found.pending()) == 1
            move = identifier("STUDY", StudyInstanceUID=study_a.study_instance_uid)
            moved = collect(
                assoc.send_c_move(move, "DEST", StudyRootQueryRetrieveInformationModelMove)
            )
            assert moved.final_status == 0
            assert len(received.datasets) == 2
        intruder = request(server, calling="INTRUDER")
        assert rejection_of(intruder) == (1, 1, 3)
        server.wait_for("association rejected")
        server.send_signal(signal.SIGHUP)
        server.wait_for("configuration reloaded")
        assert server.stop() == 0

    messages = audit_lines(audit_file)
    assert summary(messages[0]) == ("110100", "E", "110120", 0)  # Application Start
    assert summary(messages[-1]) == ("110100", "E", "110121", 0)  # Application Stop
    by_ae: dict[str | None, list[dict[str, Any]]] = {}
    for message in messages[1:-1]:
        by_ae.setdefault(requestor_ae(message), []).append(message)

    # The readiness C-ECHO: a login and a logout (User Authentication), nothing else.
    assert [summary(m) for m in by_ae["TESTSCU"]][:2] == [
        ("110114", "E", "110122", 0),
        ("110114", "E", "110123", 0),
    ]
    # C-STORE: one DICOM Instances Transferred (C) per study, between login and logout.
    modality = by_ae["MODALITY"]
    assert [summary(m) for m in modality] == [
        ("110114", "E", "110122", 0),
        ("110104", "C", "", 0),
        ("110104", "C", "", 0),
        ("110114", "E", "110123", 0),
    ]
    login = modality[0]["ActiveParticipant"][0]
    assert login["NetworkAccessPointID"] == "127.0.0.1"
    assert login["NetworkAccessPointTypeCode"] == "2"
    stored = {}
    for message in modality[1:3]:
        stored.update(objects(message, "110180"))
        roles = {p["UserID"]: p["RoleIDCode"][0]["csd-code"] for p in message["ActiveParticipant"]}
        assert roles == {"MODALITY": "110153", "PACSD": "110152"}
    assert stored[study_a.study_instance_uid]["SOPClass"] == [
        {"UID": CT_IMAGE_STORAGE, "NumberOfInstances": 2}
    ]
    assert stored[study_b.study_instance_uid]["SOPClass"] == [
        {"UID": CT_IMAGE_STORAGE, "NumberOfInstances": 1}
    ]
    patients = {pid for m in modality[1:3] for pid in objects(m, "2")}
    assert patients == {"AUDIT-PAT-A", "AUDIT-PAT-B"}

    # C-FIND: Query with the identifier; C-MOVE: Transferred (R) to DEST at its address.
    qr = [summary(m) for m in by_ae["QRSCU"]]
    assert qr == [
        ("110114", "E", "110122", 0),
        ("110112", "E", "", 0),
        ("110104", "R", "", 0),
        ("110114", "E", "110123", 0),
    ]
    query_object = objects(by_ae["QRSCU"][1], "110181")[StudyRootQueryRetrieveInformationModelFind]
    assert query_object["ParticipantObjectTypeCodeRole"] == 24
    assert query_object["ParticipantObjectQuery"]  # base64 of the identifier as received
    move_message = by_ae["QRSCU"][2]
    destination = [p for p in move_message["ActiveParticipant"] if role_of(p) == "110152"]
    assert destination[0]["UserID"] == "DEST"
    assert destination[0]["NetworkAccessPointID"] == "127.0.0.1"
    assert study_a.study_instance_uid in objects(move_message, "110180")

    # The rejected association: Security Alert / Node Authentication, outcome 4, with the rule.
    (alert,) = by_ae["INTRUDER"]
    assert summary(alert) == ("110113", "E", "110126", 4)
    assert "rule intruders" in alert["EventIdentification"]["EventOutcomeDescription"]
    # SIGHUP: Security Alert / Security Configuration, reported by pacsd itself.
    (reload,) = [m for m in messages if type_codes(m) == ["110129"]]
    assert outcome(reload) == 0
    assert messages.index(reload) > messages.index(alert)
    source = messages[0]["AuditSourceIdentification"][0]["AuditSourceID"]
    assert source.startswith("PACSD@")

    # A stream apart: no audit message and no patient or study identifier in the service log.
    service_log = server.output()
    for needle in ("EventIdentification", "AUDIT-PAT-A", "AUDIT-PAT-B", "Audit^Alice",
                   study_a.study_instance_uid, study_b.study_instance_uid):  # fmt: skip
        assert needle not in service_log
    assert audit_file.stat().st_mode & 0o777 == 0o600


SYSLOG_HEADER = re.compile(
    rb"^<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00) (\S+) pacsd-test (\d+) "
    rb"DICOM\+RFC3881 - \xef\xbb\xbf(.*)$",
    re.DOTALL,
)


@contextmanager
def syslog_collector(protocol: str) -> Iterator[tuple[int, list[bytes]]]:
    """A syslog receiver on loopback (UDP datagrams, or TCP with octet-counting frames)."""
    messages: list[bytes] = []
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.settimeout(20)
        if protocol == "tcp":
            listening.listen(1)
        reader = threading.Thread(target=_receive, args=(listening, protocol, messages))
        reader.start()
        try:
            yield listening.getsockname()[1], messages
        finally:
            reader.join(25)


def _receive(listening: socket.socket, protocol: str, messages: list[bytes]) -> None:
    """Collect messages until Application Stop arrives or 20 s pass without one."""
    try:
        if protocol == "udp":
            while not messages or b'"110121"' not in messages[-1]:
                messages.append(listening.recv(65535))
            return
        connection, _ = listening.accept()
        with connection:
            connection.settimeout(20)
            buffer = b""
            while not messages or b'"110121"' not in messages[-1]:
                chunk = connection.recv(65535)
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]
    except TimeoutError:
        return


def test_a_request_pacsd_does_not_serve_is_answered_and_audited(
    pacsd_server: ServerFactory,
) -> None:
    """Issue 17: an N-DELETE on an MPPS context (MPPS defines no N-DELETE) gets 0x0211 and a
    Security Alert / Use of Restricted Function naming it; the association goes on."""
    mpps = "1.2.840.10008.3.1.2.3.3"
    policies = [{"name": "mpps", "sop_classes": ["verification", "mpps"]}]
    server = pacsd_server(policies=policies)
    assoc = request(server, calling="PROBE", contexts=[(mpps, ["1.2.840.10008.1.2"])])
    assert assoc.is_established
    try:
        status = assoc.send_n_delete(mpps, "1.2.826.0.1.3680043.10.1307.1")
        assert status is not None
        assert int(status.Status) == 0x0211
        assert assoc.is_established
    finally:
        assoc.release()
    assert server.stop() == 0
    messages = audit_lines(server.config_path.parent / "audit.jsonl")
    alerts = [m for m in messages if requestor_ae(m) == "PROBE" and event_id(m) == "110113"]
    assert [summary(m) for m in alerts] == [("110113", "E", "110132", 4)]
    description = alerts[0]["EventIdentification"]["EventOutcomeDescription"]
    assert "N-DELETE" in description
    assert "0x0211" in description


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_audit_messages_reach_a_syslog_collector_as_rfc5424(
    pacsd_server: ServerFactory, protocol: str
) -> None:
    """Each audit message is also an RFC 5424 syslog message: PRI <85> (authpriv, notice),
    version 1, UTC timestamp, host, APP-NAME, PROCID, MSGID DICOM+RFC3881, the JSON as MSG."""
    with syslog_collector(protocol) as (port, messages):
        syslog = {"host": "127.0.0.1", "port": port, "protocol": protocol, "app_name": "pacsd-test"}
        server = pacsd_server(audit={"syslog": syslog})
        assert server.stop() == 0
    parsed = [SYSLOG_HEADER.match(message) for message in messages]
    assert all(parsed), messages
    bodies = [json.loads(match.group(5)) for match in parsed if match]
    assert int(parsed[0].group(4)) == server.process.pid  # type: ignore[union-attr]
    assert summary(bodies[0]) == ("110100", "E", "110120", 0)
    assert summary(bodies[-1]) == ("110100", "E", "110121", 0)
    assert [summary(b)[2] for b in bodies[1:-1]][:2] == ["110122", "110123"]  # readiness echo
    file_messages = audit_lines(server.config_path.parent / "audit.jsonl")
    assert bodies == file_messages
