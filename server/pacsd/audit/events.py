"""pacsd's audit events: which PS3.15 A.5.3 message each security-relevant event becomes.

- Association accepted: User Authentication (110114) / Login (110122), outcome 0, the calling
  AE (and the negotiated username, PS3.7 D.3.3.7) as requestor. ATNA has no "association"
  event; a DICOM node opening a session with pacsd is a login of that node, and its end (release
  or abort) a Logout (110123). "Network Entry" (110108) is for machines joining a network, not
  sessions, so it is not used. A session's Login is written before its first other message;
  quiet associations (nothing else audited) are counted per peer instead, one Login and one
  Logout per peer and interval (sessions.py).
- Association rejected: Security Alert (110113) / Node Authentication (110126), outcome 4 (the
  refusal worked: PS3.15 A.5.3.11 "minor failure: mitigation was effective"), with the reason
  and the deciding rule; when a user identity was sent and failed verification, also User
  Authentication / Login with outcome 4.
- An operation refused by the policy (0x0124): Security Alert / Use of Restricted Function.
- Configuration reloaded (SIGHUP): Security Alert / Security Configuration (110129): the
  reloadable sections are the acceptance policies and the AE table.
- Application start and stop: Application Activity (110100) / Application Start / Stop.
- Deletions: DICOM Study Deleted (110105), action D.
- A Storage Commitment report given up (commitment.report_lifetime, max_attempts) or cancelled
  (`pacsd commitment cancel`): DICOM Instances Transferred (110104), action R, outcome 4, the
  requester as destination (dcm4chee audits storage commitment with this event too): the
  modality was never told that pacsd took responsibility for those instances.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from pacsd.audit.messages import (
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    DELETE,
    EXECUTE,
    ID_SOP_CLASS_UID,
    INSTANCES_TRANSFERRED,
    LOGIN,
    LOGOUT,
    MINOR_FAILURE,
    NODE_AUTHENTICATION,
    READ,
    ROLE_APPLICATION,
    ROLE_APPLICATION_LAUNCHER,
    ROLE_DESTINATION,
    ROLE_REPORT,
    SECURITY_ALERT,
    SECURITY_CONFIGURATION,
    STUDY_DELETED,
    SUCCESS,
    SYSTEM_OBJECT,
    USE_OF_RESTRICTED_FUNCTION,
    USER_AUTHENTICATION,
    AuditMessage,
    AuditSource,
    Coded,
    Participant,
    application_entity,
    audit_message,
    node_object,
    patient_object,
    study_object,
    uri_object,
)
from pacsd.audit.sessions import QuietSessions
from pacsd.handle import ClientHandle


def requestor(handle: ClientHandle, role: Participant | None = None) -> Participant:
    """The peer of an association: its calling AE title, address and user name."""
    return application_entity(
        handle.calling_ae_title or "-",
        True,
        handle.peer_address,
        user_name=handle.username,
        role=role.role if role else None,
    )


def pacsd_participant(ae_title: str, requestor: bool = False) -> Participant:
    """pacsd itself as participant."""
    return application_entity(ae_title, requestor)


def login(source: AuditSource, ae_title: str, handle: ClientHandle, outcome: int) -> AuditMessage:
    """User Authentication / Login: an association accepted (0) or an identity refused (4)."""
    description = f"association {handle.association_id}"
    if handle.user_identity_type is not None:
        verified = {True: "verified", False: "failed", None: "not checked"}[handle.user_verified]
        description += f"; user identity type {handle.user_identity_type} {verified}"
    if handle.tls_version:
        description += f"; {handle.tls_version} {handle.tls_subject or ''}".rstrip()
    return _authentication(source, ae_title, handle, outcome, LOGIN, description)


def logout(source: AuditSource, ae_title: str, handle: ClientHandle) -> AuditMessage:
    """User Authentication / Logout: the association ended (outcome 0; the description says
    released (an A-RELEASE-RP was exchanged) or aborted)."""
    description = f"association {handle.association_id} {handle.state}"
    return _authentication(source, ae_title, handle, SUCCESS, LOGOUT, description)


def quiet_sessions(
    source: AuditSource, ae_title: str, quiet: QuietSessions
) -> tuple[AuditMessage, AuditMessage]:
    """User Authentication / Login and Logout of `quiet.count` associations of one peer that
    had nothing else audited (sessions.py), dated at the last one."""
    handle = quiet.handle
    first, last = (
        moment.isoformat(timespec="milliseconds") for moment in (quiet.first, quiet.last)
    )
    what = f"{quiet.count} associations without audited operations, {first} to {last}"
    what = what.replace("+00:00", "Z")
    login_text = what
    if handle.user_identity_type is not None:
        verified = {True: "verified", False: "failed", None: "not checked"}[handle.user_verified]
        login_text += f"; user identity type {handle.user_identity_type} {verified}"
    if handle.tls_version:
        login_text += f"; {handle.tls_version} {handle.tls_subject or ''}".rstrip()
    return (
        _authentication(source, ae_title, handle, SUCCESS, LOGIN, login_text, quiet.last),
        _authentication(
            source, ae_title, handle, SUCCESS, LOGOUT, f"{what}, {handle.state}", quiet.last
        ),
    )


def _authentication(
    source: AuditSource,
    ae_title: str,
    handle: ClientHandle,
    outcome: int,
    event_type: Coded,
    description: str,
    when: datetime | None = None,
) -> AuditMessage:
    """User Authentication (110114) between the peer and pacsd, Login or Logout."""
    return audit_message(
        USER_AUTHENTICATION,
        EXECUTE,
        outcome,
        source,
        [requestor(handle), pacsd_participant(handle.called_ae_title or ae_title)],
        event_types=[event_type],
        description=description,
        when=when,
    )


def association_rejected(
    source: AuditSource, ae_title: str, handle: ClientHandle, reason: str, rule: str | None
) -> AuditMessage:
    """Security Alert / Node Authentication: an A-ASSOCIATE-RJ, with why and which rule."""
    node = f"{handle.calling_ae_title or '-'}@{handle.peer_address}:{handle.peer_port}"
    detail = f"rule {rule}: {reason}" if rule else reason
    return audit_message(
        SECURITY_ALERT,
        EXECUTE,
        MINOR_FAILURE,
        source,
        [pacsd_participant(ae_title), requestor(handle)],
        event_types=[NODE_AUTHENTICATION],
        objects=[node_object(node, f"called AE {handle.called_ae_title}")],
        description=f"association rejected: {detail}",
    )


def operation_refused(
    source: AuditSource, ae_title: str, handle: ClientHandle, operation: str, sop_class_uid: str
) -> AuditMessage:
    """Security Alert / Use of Restricted Function: a request the policy did not allow."""
    return audit_message(
        SECURITY_ALERT,
        EXECUTE,
        MINOR_FAILURE,
        source,
        [pacsd_participant(ae_title), requestor(handle)],
        event_types=[USE_OF_RESTRICTED_FUNCTION],
        description=f"{operation} {sop_class_uid} refused by policy (0x0124)",
    )


def request_not_served(
    source: AuditSource,
    ae_title: str,
    handle: ClientHandle,
    operation: str,
    sop_class_uid: str,
    status: int,
    reason: str,
) -> AuditMessage:
    """Security Alert / Use of Restricted Function: a DIMSE request pacsd does not serve
    (an operation the SOP class does not define, a SOP class not its context's): answered with
    `status`, and recorded, since a peer sending them is misconfigured or probing."""
    return audit_message(
        SECURITY_ALERT,
        EXECUTE,
        MINOR_FAILURE,
        source,
        [pacsd_participant(ae_title), requestor(handle)],
        event_types=[USE_OF_RESTRICTED_FUNCTION],
        description=f"{operation} {sop_class_uid} not served: {reason} (0x{status:04X})",
    )


def configuration_reloaded(
    source: AuditSource, ae_title: str, config: Path | None, accepted: bool, detail: str
) -> AuditMessage:
    """Security Alert / Security Configuration: policies and AE table reloaded (or refused)."""
    objects = [uri_object(config.resolve().as_uri())] if config is not None else []
    return audit_message(
        SECURITY_ALERT,
        EXECUTE,
        SUCCESS if accepted else MINOR_FAILURE,
        source,
        [pacsd_participant(ae_title)],
        event_types=[SECURITY_CONFIGURATION],
        objects=objects,
        description=detail,
    )


def application_activity(source: AuditSource, ae_title: str, started: bool) -> AuditMessage:
    """Application Activity / Application Start or Stop (PS3.15 A.5.3.1)."""
    application = Participant(
        ae_title,
        False,
        alternative_user_id=f"AETITLES={ae_title}",
        user_name=f"pacsd pid {os.getpid()}",
        role=ROLE_APPLICATION,
    )
    launcher = Participant(_os_user(), True, role=ROLE_APPLICATION_LAUNCHER)
    return audit_message(
        APPLICATION_ACTIVITY,
        EXECUTE,
        SUCCESS,
        source,
        [application, launcher],
        event_types=[APPLICATION_START if started else APPLICATION_STOP],
    )


def study_deleted(
    source: AuditSource,
    ae_title: str,
    study_instance_uid: str,
    patient_id: str | None,
    sop_classes: Mapping[str, int],
    reason: str,
    user: str | None,
) -> AuditMessage:
    """DICOM Study Deleted (PS3.15 A.5.3.5): instances of one study removed from the archive."""
    participants = [pacsd_participant(ae_title, requestor=user is None)]
    if user is not None:
        participants.append(Participant(user, True))
    objects = [study_object(study_instance_uid, sop_classes)]
    if patient_id:
        objects.append(patient_object(patient_id))
    return audit_message(
        STUDY_DELETED, DELETE, SUCCESS, source, participants, objects=objects, description=reason
    )


def commitment_report_ended(
    source: AuditSource,
    ae_title: str,
    requester: tuple[str, str | None],
    transaction: tuple[str, int],
    reason: str,
    user: str | None,
) -> AuditMessage:
    """DICOM Instances Transferred, minor failure: a Storage Commitment report (PS3.4 J.3.3)
    that will not be sent; `requester` is its AE title and address, `transaction` the
    Transaction UID and how many instances it named."""
    calling, address = requester
    transaction_uid, instances = transaction
    participants = [
        pacsd_participant(ae_title, requestor=user is None),
        application_entity(calling, False, address, role=ROLE_DESTINATION),
    ]
    if user is not None:
        participants.append(Participant(user, True))
    report = {
        "ParticipantObjectID": "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "ParticipantObjectTypeCode": SYSTEM_OBJECT,
        "ParticipantObjectTypeCodeRole": ROLE_REPORT,
        "ParticipantObjectIDTypeCode": ID_SOP_CLASS_UID,
        "ParticipantObjectDescription": f"transaction {transaction_uid}, {instances} instances",
    }
    return audit_message(
        INSTANCES_TRANSFERRED,
        READ,
        MINOR_FAILURE,
        source,
        participants,
        objects=[report],
        description=f"storage commitment report to {calling} not sent: {reason}",
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
