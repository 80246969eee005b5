"""The audit trail: security-relevant events as DICOM audit messages (PS3.15 A.5, IHE ATNA).

A stream of its own, apart from the service log: JSON lines in `audit.file` (mode 0600) and,
optionally, RFC 5424 syslog messages to an audit repository (`audit.syslog`). The service log
never carries these messages, nor the patient IDs and study UIDs in them; the audit file does,
because naming the patient and the studies touched is what an ATNA audit record is for
(PS3.15 A.5.3.4: the study and patient are ParticipantObjects), and the file is readable by
pacsd's user alone.

The server calls `configure` once at start-up; hooks in the association handler, the DIMSE
guard and the daemon call the functions below, which do nothing when the trail is disabled and
never raise. Other commands (e.g. `pacsd fsck --repair`) call `configure(settings)`, then
`study_deleted(...)` for each study they remove instances of, then `shutdown()`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from pacsd.audit import events, sessions, transfers
from pacsd.audit.messages import MINOR_FAILURE, SUCCESS, AuditMessage, AuditSource
from pacsd.audit.sinks import FailureReport, FileSink, SyslogSink
from pacsd.dimse.messages import Request
from pacsd.handle import ClientHandle
from pacsd.settings import Peer, Settings
from pacsd.settings_security import AuditSettings

PeerTable = Callable[[], Mapping[str, Peer]]
NOT_AUTHORIZED = 0x0124

__all__ = [
    "AuditTrail",
    "application_started",
    "application_stopped",
    "association_accepted",
    "association_closed",
    "association_rejected",
    "configuration_reloaded",
    "configure",
    "current",
    "data_imported",
    "operation_finished",
    "reopen",
    "shutdown",
    "study_deleted",
    "use_loop",
]


class AuditTrail:
    """Builds and writes audit messages; one per process."""

    def __init__(self, settings: AuditSettings, ae_title: str, peers: PeerTable | None = None):
        hostname = socket.gethostname()
        self.ae_title = ae_title
        self.source = AuditSource(
            settings.source_id or f"{ae_title}@{hostname}", settings.enterprise_site_id
        )
        self.file = FileSink(settings.file, settings.fsync) if settings.file else None
        self.syslog = SyslogSink(settings.syslog, hostname) if settings.syslog else None
        self.peers = peers
        self.stores = transfers.StoreAggregates()
        self.sessions = sessions.SessionAggregates(self.flush_sessions)
        self.errors = FailureReport("events")
        self.emitted = 0
        self._logged_in: set[str] = set()
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()  # a Login is written before its session's others

    def emit(self, message: AuditMessage) -> None:
        """Write one message to every sink."""
        body = orjson.dumps(message)
        with self._lock:
            self.emitted += 1
        if self.file is not None:
            self.file.write(body + b"\n")
        if self.syslog is not None:
            self.syslog.write(body)

    def flush_stores(self) -> None:
        """Emit the pending C-STORE aggregates of every association (at shutdown)."""
        for handle, studies in self.stores.take_all():
            self.login_first(handle)
            for message in transfers.stored_messages(self.source, self.ae_title, handle, studies):
                self.emit(message)

    def flush_sessions(self) -> None:
        """Emit the Login/Logout aggregates of quiet associations (sessions.py); never raises."""
        try:
            for quiet in self.sessions.take_all():
                for message in events.quiet_sessions(self.source, self.ae_title, quiet):
                    self.emit(message)
        except Exception as exc:
            self.errors.failed(exc)

    def login_first(self, handle: ClientHandle) -> None:
        """The Login of `handle`'s association, unless written already: before the first other
        message about it (sessions.py)."""
        with self._login_lock:
            if not self.logged_in(handle, remember=True):
                self.emit(events.login(self.source, self.ae_title, handle, SUCCESS))

    def logged_in(self, handle: ClientHandle, remember: bool | None = None) -> bool:
        """Whether a Login was written for `handle`; `remember` sets (True) or clears it."""
        with self._lock:
            known = handle.association_id in self._logged_in
            if remember is True:
                self._logged_in.add(handle.association_id)
            elif remember is False:
                self._logged_in.discard(handle.association_id)
        return known

    def close(self) -> None:
        """Flush the aggregates and close the sinks."""
        self.flush_stores()
        self.flush_sessions()
        if self.file is not None:
            self.file.close()
        if self.syslog is not None:
            self.syslog.close()


_trail: AuditTrail | None = None


def configure(settings: Settings, peers: PeerTable | None = None) -> AuditTrail | None:
    """Open this process's audit trail per `settings.audit` (None when disabled)."""
    global _trail
    shutdown()
    audit = settings.audit
    _trail = AuditTrail(audit, settings.ae_title, peers) if audit.enabled else None
    return _trail


def use_loop(loop: sessions.LoopTimers | None) -> None:
    """Have `loop` (where associations end) time the flushes of the quiet associations'
    aggregates instead of a thread of their own (None: back to the thread)."""
    if _trail is not None:
        _trail.sessions.call_later = loop.call_later if loop is not None else None


def current() -> AuditTrail | None:
    """The trail in force, if any."""
    return _trail


def shutdown() -> None:
    """Write what is pending, close the sinks, disable the trail."""
    global _trail
    trail, _trail = _trail, None
    if trail is not None:
        trail.close()


def reopen() -> None:
    """Reopen the audit file (after logrotate moved it; done on SIGHUP)."""
    if _trail is not None and _trail.file is not None:
        _trail.file.reopen()


def _emit(build: Callable[[AuditTrail], AuditMessage | None]) -> None:
    trail = _trail
    if trail is None:
        return
    try:
        message = build(trail)
        if message is not None:
            trail.emit(message)
    except Exception as exc:  # an audit bug must never break the operation being audited
        trail.errors.failed(exc)


def application_started() -> None:
    """Application Activity / Application Start."""
    _emit(lambda t: events.application_activity(t.source, t.ae_title, started=True))


def application_stopped() -> None:
    """Pending C-STORE aggregates, then Application Activity / Application Stop."""
    trail = _trail
    if trail is not None:
        try:
            trail.flush_stores()
        except Exception as exc:
            trail.errors.failed(exc)
        trail.flush_sessions()
    _emit(lambda t: events.application_activity(t.source, t.ae_title, started=False))


def configuration_reloaded(config: Path | None, accepted: bool, detail: str) -> None:
    """Security Alert / Security Configuration, after a reload (or a refused one)."""
    _emit(lambda t: events.configuration_reloaded(t.source, t.ae_title, config, accepted, detail))


def request_not_served(
    handle: ClientHandle, operation: str, sop_class_uid: str, status: int, reason: str
) -> None:
    """Security Alert / Use of Restricted Function: a request answered before any service."""

    def build(trail: AuditTrail) -> AuditMessage:
        trail.login_first(handle)
        return events.request_not_served(
            trail.source, trail.ae_title, handle, operation, sop_class_uid, status, reason
        )

    _emit(build)


def association_accepted(handle: ClientHandle) -> None:
    """An association was accepted: its User Authentication / Login (outcome 0) is written
    before the first other message about it, or counted with the peer's quiet associations
    when it ends without one (sessions.py). Nothing to do now."""


def association_rejected(handle: ClientHandle, reason: str, rule: str | None) -> None:
    """Security Alert / Node Authentication; a failed user identity also as a failed Login."""
    if handle.user_identity_type is not None and handle.user_verified is False:
        _emit(lambda t: events.login(t.source, t.ae_title, handle, MINOR_FAILURE))
    _emit(lambda t: events.association_rejected(t.source, t.ae_title, handle, reason, rule))


def association_closed(handle: ClientHandle) -> None:
    """The association's stored-instances messages, then its Logout."""
    trail = _trail
    if trail is None:
        return
    try:
        studies = trail.stores.take(handle)
        if not studies and not trail.logged_in(handle):
            if handle.state in ("released", "aborted"):  # it was established: a quiet one
                trail.sessions.add(handle)
            return
        trail.login_first(handle)
        for message in transfers.stored_messages(trail.source, trail.ae_title, handle, studies):
            trail.emit(message)
    except Exception as exc:
        trail.errors.failed(exc)
    if trail.logged_in(handle, remember=False):
        _emit(lambda t: events.logout(t.source, t.ae_title, handle))


def operation_finished(
    handle: ClientHandle,
    request: Request,
    operation: str,
    status: int,
    fields: Mapping[str, Any],
    subject: tuple[str, str] | None = None,
) -> None:
    """A DIMSE operation ended with `status` (from the guard, services/guard.py); never raises.

    `subject` is a stored instance's (Study Instance UID, Patient ID), when the archive read it.
    """
    trail = _trail
    if trail is None:
        return
    try:
        _operation(trail, handle, request, operation, status, fields, subject)
    except Exception as exc:
        trail.errors.failed(exc)


def _operation(
    trail: AuditTrail,
    handle: ClientHandle,
    request: Request,
    operation: str,
    status: int,
    fields: Mapping[str, Any],
    subject: tuple[str, str] | None,
) -> None:
    source, ae_title = trail.source, trail.ae_title
    if status == NOT_AUTHORIZED:
        sop_class = request.sop_class_uid
        trail.login_first(handle)
        trail.emit(events.operation_refused(source, ae_title, handle, operation, sop_class))
    elif operation == "C-STORE":
        key = transfers.store_key(request, status, str(fields.get("outcome", "")), subject)
        trail.stores.add(handle, key, request.sop_class_uid, status)
    elif operation == "C-FIND":
        trail.login_first(handle)
        trail.emit(transfers.query_message(source, ae_title, handle, request, status, fields))
    elif operation in ("C-GET", "C-MOVE"):
        address = _peer_address(trail, str(fields.get("destination", "") or ""))
        trail.login_first(handle)
        trail.emit(
            transfers.retrieve_message(
                source, ae_title, handle, request, operation, status, fields, address
            )
        )


def _peer_address(trail: AuditTrail, ae_title: str) -> str | None:
    if not ae_title or trail.peers is None:
        return None
    peer = trail.peers().get(ae_title)
    return peer.host if peer is not None else None


def commitment_report_ended(
    requester: str, transaction: tuple[str, int], reason: str, user: str | None = None
) -> None:
    """DICOM Instances Transferred, minor failure: a Storage Commitment report to `requester`
    (transaction UID, instance count) given up or, by `user`, cancelled."""
    _emit(
        lambda t: events.commitment_report_ended(
            t.source,
            t.ae_title,
            (requester, _peer_address(t, requester)),
            transaction,
            reason,
            user,
        )
    )


def data_imported(
    media: Sequence[Path], user: str, studies: Mapping[transfers.StudyKey, transfers.StudyTally]
) -> None:
    """Data Import: what `pacsd import` of `media` (files, folders), run by `user`, stored (or
    refused), one message per study, action and outcome."""
    trail = _trail
    if trail is None:
        return
    try:
        for message in transfers.imported_messages(
            trail.source, trail.ae_title, media, user, studies
        ):
            trail.emit(message)
    except Exception as exc:
        trail.errors.failed(exc)


def study_deleted(
    study_instance_uid: str,
    patient_id: str | None,
    sop_classes: Mapping[str, int],
    reason: str,
    user: str | None = None,
) -> None:
    """DICOM Study Deleted: instances of one study removed (`sop_classes`: UID -> count).

    `reason` says why (e.g. "fsck --repair: index rows without files"); `user` is the person
    who ran the command, when known.
    """
    _emit(
        lambda t: events.study_deleted(
            t.source, t.ae_title, study_instance_uid, patient_id, sop_classes, reason, user
        )
    )
