"""DIMSE operations as audit messages: stored, queried, retrieved (PS3.15 A.5.3.4, A.5.3.10).

C-STORE is aggregated: one DICOM Instances Transferred message per association, study, action
and outcome, emitted when the association ends (as dcm4chee-arc does, and as IHE ITI-20 allows
for "Instances-Stored"): a CT study of 2000 images makes one message, not 2000, and it still
names the study, the patient, each SOP class and its instance count. The EventActionCode says
what pacsd did (A.5.3.4): C, the instance was new; R, already held and kept (duplicate_policy
keep-first); U, held and replaced (overwrite). A failed C-STORE counts under outcome 4 or 8.
C-FIND is one Query message per request, with the identifier as sent; C-GET and C-MOVE are one
DICOM Instances Transferred (R) message per request, naming the destination. `pacsd import` is
aggregated the same way, one Data Import message (A.5.3.7) per run, study, action and outcome:
the files' folders as Source Media (URIs), pacsd and the OS user who ran it as importers.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsd.audit.events import requestor
from pacsd.audit.messages import (
    CREATE,
    DATA_IMPORT,
    EXECUTE,
    INSTANCES_TRANSFERRED,
    MEDIA_URI,
    QUERY,
    READ,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    ROLE_SOURCE_MEDIA,
    UPDATE,
    AuditMessage,
    AuditSource,
    Participant,
    application_entity,
    audit_message,
    outcome_of_status,
    patient_object,
    query_object,
    study_object,
)
from pacsd.dicom.part10 import open_dataset, read_layout
from pacsd.dimse.messages import Request
from pacsd.handle import ClientHandle

_LAST_TAG_READ = 0x0020000D  # StudyInstanceUID: PatientID (0010,0020) comes before it
_HEADER_INFLATE_LIMIT = 16 * 1024 * 1024
_ACTIONS = {"stored": CREATE, "duplicate-kept-first": READ, "replaced": UPDATE}


@dataclass(frozen=True)
class StudyKey:
    """What one aggregated message is about."""

    study_instance_uid: str
    patient_id: str
    action: str
    outcome: int


@dataclass
class StudyTally:
    """Instances of one study on one association, by SOP class, and failure statuses."""

    sop_classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)


class StoreAggregates:
    """C-STORE outcomes per association until the association ends (thread-safe)."""

    def __init__(self) -> None:
        self._by_association: dict[str, tuple[ClientHandle, dict[StudyKey, StudyTally]]] = {}
        self._lock = threading.Lock()

    def add(self, handle: ClientHandle, key: StudyKey, sop_class_uid: str, status: int) -> None:
        """Count one C-STORE of `handle`'s association."""
        with self._lock:
            _, studies = self._by_association.setdefault(handle.association_id, (handle, {}))
            tally = studies.setdefault(key, StudyTally())
            tally.sop_classes[sop_class_uid] += 1
            if status:
                tally.statuses[status] += 1

    def take(self, handle: ClientHandle) -> dict[StudyKey, StudyTally]:
        """The tallies of `handle`'s association, forgotten here."""
        with self._lock:
            _, studies = self._by_association.pop(handle.association_id, (handle, {}))
        return studies

    def take_all(self) -> Iterator[tuple[ClientHandle, dict[StudyKey, StudyTally]]]:
        """Every association's tallies (at shutdown), forgotten here."""
        with self._lock:
            entries, self._by_association = list(self._by_association.values()), {}
        yield from entries


def stored_messages(
    source: AuditSource, ae_title: str, handle: ClientHandle, studies: Mapping[StudyKey, StudyTally]
) -> Iterator[AuditMessage]:
    """One DICOM Instances Transferred message per study, action and outcome."""
    sender = requestor(handle, Participant("", True, role=ROLE_SOURCE))
    receiver = _local(handle, ae_title)
    for key, tally in studies.items():
        objects = [study_object(key.study_instance_uid or "unknown", tally.sop_classes)]
        if key.patient_id:
            objects.append(patient_object(key.patient_id))
        total = sum(tally.sop_classes.values())
        description = f"{total} instances, association {handle.association_id}"
        if tally.statuses:
            codes = ", ".join(f"0x{code:04X} x{n}" for code, n in sorted(tally.statuses.items()))
            description += f"; failed: {codes}"
        yield audit_message(
            INSTANCES_TRANSFERRED,
            key.action,
            key.outcome,
            source,
            [sender, receiver],
            objects=objects,
            description=description,
        )


def imported_key(outcome: str, status: int, subject: tuple[str, str]) -> StudyKey:
    """The study, patient and action of one imported file (`outcome` as the importer's:
    stored, duplicate, replaced, refused)."""
    action = {"duplicate": READ, "replaced": UPDATE}.get(outcome, CREATE)
    return StudyKey(subject[0], subject[1], action, outcome_of_status(status))


def imported_messages(
    source: AuditSource,
    ae_title: str,
    media: Sequence[Path],
    user: str,
    studies: Mapping[StudyKey, StudyTally],
) -> Iterator[AuditMessage]:
    """Data Import (PS3.15 A.5.3.7): one message per study, action and outcome of an import run;
    each path imported is a Source Media participant (media type URI, CID 405)."""
    importers = [
        application_entity(ae_title, False, user_name="pacsd import", role=ROLE_DESTINATION),
        Participant(user, True),
    ]
    sources = [
        Participant(path.resolve().as_uri(), False, role=ROLE_SOURCE_MEDIA, media_type=MEDIA_URI)
        for path in media
    ]
    for key, tally in studies.items():
        objects = [study_object(key.study_instance_uid or "unknown", tally.sop_classes)]
        if key.patient_id:
            objects.append(patient_object(key.patient_id))
        description = f"{sum(tally.sop_classes.values())} instances imported by {user}"
        if tally.statuses:
            codes = ", ".join(f"0x{code:04X} x{n}" for code, n in sorted(tally.statuses.items()))
            description += f"; refused: {codes}"
        yield audit_message(
            DATA_IMPORT,
            key.action,
            key.outcome,
            source,
            [*importers, *sources],
            objects=objects,
            description=description,
        )


def _local(handle: ClientHandle, ae_title: str) -> Participant:
    """pacsd as the destination of what the peer sends (instances, a query)."""
    local = handle.called_ae_title or ae_title
    return Participant(local, False, alternative_user_id=f"AETITLES={local}", role=ROLE_DESTINATION)


def store_key(
    request: Request, status: int, outcome: str, subject: tuple[str, str] | None = None
) -> StudyKey:
    """The study, patient and action of one finished C-STORE (read from the received file
    when the archive did not get that far)."""
    path = getattr(request.data, "path", None)
    study_instance_uid, patient_id = subject or instance_subject(path)
    action = _ACTIONS.get(outcome, CREATE)
    return StudyKey(study_instance_uid, patient_id, action, outcome_of_status(status))


def instance_subject(path: Path | None) -> tuple[str, str]:
    """(StudyInstanceUID, PatientID) of a received data set, read from its file.

    Only the elements up to (0020,000D) are parsed, values over 1 KiB left unread; a data set
    that cannot be read (it may be why the C-STORE failed) gives empty strings.
    """
    if path is None:
        return "", ""
    try:
        with path.open("rb") as fp:
            layout = read_layout(fp)
            if layout.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
                source = open_dataset(fp, layout, _HEADER_INFLATE_LIMIT)
            else:
                source = open_dataset(fp, layout, 0)
            source.stream.seek(source.start)
            dataset = read_dataset(
                source.stream,
                is_implicit_VR=not source.explicit_vr,
                is_little_endian=source.little_endian,
                bytelength=source.end - source.start,
                stop_when=_after_study_uid,
                defer_size=1024,
            )
            return _text(dataset, "StudyInstanceUID"), _text(dataset, "PatientID")
    except Exception:  # a broken data set has no subject; the failure status says why
        return "", ""


def _after_study_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_TAG_READ


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "").strip()[:256]
    except Exception:
        return ""


def query_message(
    source: AuditSource, ae_title: str, handle: ClientHandle, request: Request, status: int,
    fields: Mapping[str, Any],
) -> AuditMessage:  # fmt: skip
    """Query (PS3.15 A.5.3.10): one C-FIND request, with its identifier as received."""
    identifier = request.data if isinstance(request.data, bytes) else b""
    sop_class_uid = request.sop_class_uid
    level = " ".join(str(fields[name]) for name in ("model", "query_level") if name in fields)
    description = f"{level}; {fields.get('matches', 0)} matches".lstrip("; ")
    return audit_message(
        QUERY,
        EXECUTE,
        outcome_of_status(status),
        source,
        [requestor(handle, Participant("", True, role=ROLE_SOURCE)), _local(handle, ae_title)],
        objects=[query_object(sop_class_uid, identifier, request.context.transfer_syntax, level)],
        description=f"{description}; status 0x{status:04X}",
    )


def retrieve_message(
    source: AuditSource,
    ae_title: str,
    handle: ClientHandle,
    request: Request,
    operation: str,
    status: int,
    fields: Mapping[str, Any],
    destination_address: str | None,
) -> AuditMessage:
    """DICOM Instances Transferred (R): a C-GET or C-MOVE, pacsd the source."""
    local = handle.called_ae_title or ae_title
    sender = Participant(
        local, operation != "C-MOVE", alternative_user_id=f"AETITLES={local}", role=ROLE_SOURCE
    )
    participants = [sender]
    if operation == "C-MOVE":
        title = str(fields.get("destination", "") or "")
        participants.append(application_entity(title or "-", False, destination_address,
                                                role=ROLE_DESTINATION))  # fmt: skip
        participants.append(requestor(handle))
    else:
        participants.append(requestor(handle, Participant("", True, role=ROLE_DESTINATION)))
    description = (
        f"{operation} {fields.get('query_level', '')}: {fields.get('instances', 0)} selected, "
        f"{fields.get('completed', 0)} sent, {fields.get('failures', 0)} failed; "
        f"status 0x{status:04X}"
    )
    return audit_message(
        INSTANCES_TRANSFERRED,
        READ,
        outcome_of_status(status),
        source,
        participants,
        objects=list(_retrieved_objects(request)),
        description=description,
    )


def _retrieved_objects(request: Request) -> Iterator[dict[str, Any]]:
    """The studies and patient the retrieve identifier names (its unique keys)."""
    try:
        identifier: Dataset = request.dataset()
        studies = identifier.get("StudyInstanceUID", "") or ""
        patient_id = _text(identifier, "PatientID")
    except Exception:
        return
    values = studies if isinstance(studies, MultiValue | list | tuple) else [studies]
    for uid in [str(value).strip() for value in values if str(value).strip()]:
        yield study_object(uid)
    if patient_id:
        yield patient_object(patient_id)
