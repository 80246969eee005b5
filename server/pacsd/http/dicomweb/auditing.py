"""DICOMweb requests as audit messages, the way audit/transfers.py writes their DIMSE twins.

A QIDO-RS search is a Query (PS3.15 A.5.3.10) like a C-FIND: the query string as received is
the ParticipantObjectQuery, the Study Root FIND SOP class names what was queried. A WADO-RS
retrieval is DICOM Instances Transferred (A.5.3.4, action R) like a C-GET: pacsd the source,
the HTTP requester (address, verified user) the destination, and the studies with their SOP
classes and instance counts, and the patient, as ParticipantObjects.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pacsd.audit.messages import (
    EXECUTE,
    ID_SOP_CLASS_UID,
    INSTANCES_TRANSFERRED,
    MAJOR_FAILURE,
    MINOR_FAILURE,
    QUERY,
    READ,
    ROLE_DESTINATION,
    ROLE_QUERY,
    ROLE_SOURCE,
    SERIOUS_FAILURE,
    SUCCESS,
    SYSTEM_OBJECT,
    AuditMessage,
    AuditSource,
    Participant,
    application_entity,
    audit_message,
    patient_object,
    study_object,
)
from pacsd.http.access import Requester

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def outcome_of_http(status: int, complete: bool = True) -> int:
    """EventOutcomeIndicator of an HTTP answer: 2xx and complete 0, 4xx 4, 5xx 8; a stream the
    client left before its end 12 (the transfer did not happen as asked)."""
    if status >= 500:
        return SERIOUS_FAILURE
    if status >= 400:
        return MINOR_FAILURE
    return SUCCESS if complete else MAJOR_FAILURE


def http_requester(requester: Requester, role: Any) -> Participant:
    """The HTTP client: its verified user name (else its address) as UserID."""
    return Participant(
        requester.username or requester.address or "-",
        True,
        user_name=requester.username,
        address=requester.address or None,
        role=role,
    )


def query_message(
    source: AuditSource,
    ae_title: str,
    requester: Requester,
    query: str,
    description: str,
    status: int,
) -> AuditMessage:
    """Query (PS3.15 A.5.3.10) for one QIDO-RS request."""
    queried: dict[str, Any] = {
        "ParticipantObjectID": STUDY_ROOT_FIND,
        "ParticipantObjectTypeCode": SYSTEM_OBJECT,
        "ParticipantObjectTypeCodeRole": ROLE_QUERY,
        "ParticipantObjectIDTypeCode": ID_SOP_CLASS_UID,
        "ParticipantObjectDescription": description,
        "ParticipantObjectQuery": base64.b64encode(query.encode("utf-8")).decode("ascii"),
    }
    return audit_message(
        QUERY,
        EXECUTE,
        outcome_of_http(status),
        source,
        [
            http_requester(requester, ROLE_SOURCE),
            application_entity(ae_title, False, role=ROLE_DESTINATION),
        ],
        objects=[queried],
        description=f"QIDO-RS {description}; HTTP {status}",
    )


def retrieve_message(
    source: AuditSource,
    ae_title: str,
    requester: Requester,
    studies: Mapping[str, Counter[str]],
    patients: Mapping[str, str],
    outcome: int,
    description: str,
) -> AuditMessage:
    """DICOM Instances Transferred (R) for one WADO-RS request; `studies`: study UID -> SOP
    class UID -> instances sent; `patients`: study UID -> Patient ID."""
    objects: list[dict[str, Any]] = []
    for study_uid, classes in studies.items():
        objects.append(study_object(study_uid, classes))
    for patient_id in sorted(set(patients.values())):
        if patient_id:
            objects.append(patient_object(patient_id))
    return audit_message(
        INSTANCES_TRANSFERRED,
        READ,
        outcome,
        source,
        [
            application_entity(ae_title, False, role=ROLE_SOURCE),
            http_requester(requester, ROLE_DESTINATION),
        ],
        objects=objects,
        description=f"WADO-RS {description}",
    )
