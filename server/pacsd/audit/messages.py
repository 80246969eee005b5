"""Audit messages in the DICOM vocabulary (PS3.15 A.5), as plain JSON-ready dictionaries.

Keys are the element and attribute names of the DICOM audit message schema (PS3.15 A.5.1):
EventIdentification, ActiveParticipant, AuditSourceIdentification,
ParticipantObjectIdentification, and coded values as {csd-code, codeSystemName, originalText}.
Nothing here does I/O; the builders are pure and unit-tested with plain values.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

AuditMessage = dict[str, Any]
Coded = dict[str, str]


def coded(code: str, system: str, text: str) -> Coded:
    """A coded value (PS3.15 A.5.1 CodedValueType)."""
    return {"csd-code": code, "codeSystemName": system, "originalText": text}


def _dcm(code: str, text: str) -> Coded:
    return coded(code, "DCM", text)


# PS3.16 CID 400 Audit Event ID.
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
DATA_IMPORT = _dcm("110107", "Import")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
# PS3.16 CID 401 Audit Event Type Code.
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
# PS3.16 CID 402 Audit Active Participant Role ID Code.
ROLE_APPLICATION = _dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
ROLE_DESTINATION = _dcm("110152", "Destination Role ID")
ROLE_SOURCE = _dcm("110153", "Source Role ID")
ROLE_SOURCE_MEDIA = _dcm("110155", "Source Media")
# PS3.16 CID 405 Media Type Code.
MEDIA_URI = _dcm("110037", "URI")
# PS3.16 CID 404 Audit Participant Object ID Type Code, and the RFC 3881 codes it extends.
ID_STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
ID_SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
ID_NODE = _dcm("110182", "Node ID")
ID_PATIENT_NUMBER = coded("2", "RFC-3881", "Patient Number")
ID_URI = coded("12", "RFC-3881", "URI")
# PS3.15 A.5.1 AuditSourceTypeCode 4.
SOURCE_APPLICATION_SERVER = coded(
    "4", "DCM", "Application Server process or tier in a multi-tier system"
)

# PS3.15 A.5.1 EventActionCode.
CREATE, READ, UPDATE, DELETE, EXECUTE = "C", "R", "U", "D", "E"
# PS3.15 A.5.1 EventOutcomeIndicator.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
# ParticipantObjectTypeCode (1 person, 2 system object) and TypeCodeRole (1 patient, 3 report,
# 4 resource, 24 query).
PERSON, SYSTEM_OBJECT = 1, 2
ROLE_PATIENT, ROLE_REPORT, ROLE_RESOURCE, ROLE_QUERY = 1, 3, 4, 24


def outcome_of_status(status: int) -> int:
    """EventOutcomeIndicator for a DIMSE status (PS3.7 C.1, PS3.15 A.5.1).

    Success and cancel (0xFE00) are 0; warnings (0xBxxx, e.g. some sub-operations failed) and
    refusals the peer may retry (0xA7xx out of resources, 0xA9xx mismatch, 0x01xx refused) are
    minor failures (4); a processing failure (0x0110) or cannot understand (0xCxxx) is serious (8).
    """
    if status in (0x0000, 0xFE00):
        return SUCCESS
    if status == 0x0110 or 0xC000 <= status <= 0xCFFF:
        return SERIOUS_FAILURE
    return MINOR_FAILURE


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a DICOM AE, a user or a process taking part in the event."""

    user_id: str
    requestor: bool
    alternative_user_id: str | None = None
    user_name: str | None = None
    address: str | None = None  # NetworkAccessPointID: an IP address (type code 2)
    role: Coded | None = None
    media_type: Coded | None = None  # MediaIdentifier/MediaType (a Source Media, A.5.3.7)

    def render(self) -> dict[str, Any]:
        """The ActiveParticipant element."""
        element: dict[str, Any] = {"UserID": self.user_id}
        if self.alternative_user_id:
            element["AlternativeUserID"] = self.alternative_user_id
        if self.user_name:
            element["UserName"] = self.user_name
        element["UserIsRequestor"] = self.requestor
        if self.address:
            element["NetworkAccessPointID"] = self.address
            element["NetworkAccessPointTypeCode"] = "2"  # IP address
        if self.role is not None:
            element["RoleIDCode"] = [self.role]
        if self.media_type is not None:
            element["MediaIdentifier"] = {"MediaType": self.media_type}
        return element


def application_entity(
    ae_title: str, requestor: bool, address: str | None = None, **extra: Any
) -> Participant:
    """A DICOM AE as participant: UserID and AlternativeUserID "AETITLES=..." (PS3.15 A.5.2)."""
    return Participant(
        ae_title, requestor, alternative_user_id=f"AETITLES={ae_title}", address=address, **extra
    )


@dataclass(frozen=True)
class AuditSource:
    """Who reports: AuditSourceIdentification (PS3.15 A.5.1)."""

    source_id: str
    enterprise_site_id: str | None = None

    def render(self) -> dict[str, Any]:
        """The AuditSourceIdentification element."""
        element: dict[str, Any] = {"AuditSourceID": self.source_id}
        if self.enterprise_site_id:
            element["AuditEnterpriseSiteID"] = self.enterprise_site_id
        element["AuditSourceTypeCode"] = [SOURCE_APPLICATION_SERVER]
        return element


def study_object(
    study_instance_uid: str,
    sop_classes: Mapping[str, int] | None = None,
    lifecycle: str | None = None,
) -> dict[str, Any]:
    """A study as ParticipantObject with its SOP classes and instance counts."""
    element = _system_object(study_instance_uid, ID_STUDY_INSTANCE_UID, ROLE_REPORT)
    if lifecycle:
        element["ParticipantObjectDataLifeCycle"] = lifecycle
    if sop_classes:
        element["SOPClass"] = [
            {"UID": uid, "NumberOfInstances": count} for uid, count in sorted(sop_classes.items())
        ]
    return element


def patient_object(patient_id: str) -> dict[str, Any]:
    """The patient as ParticipantObject (type person, role patient, ID type patient number)."""
    return {
        "ParticipantObjectID": patient_id,
        "ParticipantObjectTypeCode": PERSON,
        "ParticipantObjectTypeCodeRole": ROLE_PATIENT,
        "ParticipantObjectIDTypeCode": ID_PATIENT_NUMBER,
    }


def query_object(
    sop_class_uid: str, identifier: bytes, transfer_syntax_uid: str, description: str = ""
) -> dict[str, Any]:
    """The query as ParticipantObject (PS3.15 A.5.3.10): the identifier as sent, base64."""
    element = _system_object(sop_class_uid, ID_SOP_CLASS_UID, ROLE_QUERY, description)
    element["ParticipantObjectQuery"] = base64.b64encode(identifier).decode("ascii")
    element["ParticipantObjectDetail"] = [
        {"type": "TransferSyntax", "value": _b64(transfer_syntax_uid)}
    ]
    return element


def node_object(node_id: str, description: str = "") -> dict[str, Any]:
    """A network node (e.g. the peer of a rejected association) as ParticipantObject."""
    return _system_object(node_id, ID_NODE, ROLE_RESOURCE, description)


def uri_object(uri: str, description: str = "") -> dict[str, Any]:
    """A resource named by URI (a configuration file) as ParticipantObject."""
    return _system_object(uri, ID_URI, ROLE_RESOURCE, description)


def _system_object(
    object_id: str, id_type: Coded, role: int, description: str = ""
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "ParticipantObjectID": object_id,
        "ParticipantObjectTypeCode": SYSTEM_OBJECT,
        "ParticipantObjectTypeCodeRole": role,
        "ParticipantObjectIDTypeCode": id_type,
    }
    if description:
        element["ParticipantObjectDescription"] = description
    return element


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii", "replace")).decode("ascii")


def audit_message(
    event_id: Coded,
    action: str,
    outcome: int,
    source: AuditSource,
    participants: Sequence[Participant],
    *,
    event_types: Iterable[Coded] = (),
    objects: Iterable[dict[str, Any]] = (),
    description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """One audit message (PS3.15 A.5.1), EventDateTime in UTC."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    identification: dict[str, Any] = {
        "EventID": event_id,
        "EventActionCode": action,
        "EventDateTime": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": outcome,
    }
    types = list(event_types)
    if types:
        identification["EventTypeCode"] = types
    if description:
        identification["EventOutcomeDescription"] = description
    message: AuditMessage = {
        "EventIdentification": identification,
        "ActiveParticipant": [participant.render() for participant in participants],
        "AuditSourceIdentification": [source.render()],
    }
    participant_objects = list(objects)
    if participant_objects:
        message["ParticipantObjectIdentification"] = participant_objects
    return message
