"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION handler checks the request, stores it in the index and answers Success at once;
the report is the worker's job, never the handler's. The worker checks every referenced
instance (index row, file present, SHA-256 as stored), keeps the outcome, and sends the
N-EVENT-REPORT (event 1: all committed; event 2: with the Failed SOP Sequence):
- on the requesting association when it is still open and `commitment.report_on_same_association`
  is on, once its reactor is idle between requests (services/retrieve.pause_reactor);
- otherwise on a new association to the requester's address from the AE table, proposing the
  SCP role for the Storage Commitment Push Model SOP class (PS3.4 J.3.3, PS3.7 D.3.3.4).
A failed delivery is retried with exponential back-off; pending requests are in the database,
so a restarted pacsd delivers them.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from pacsd.errors import (
    MissingAttribute,
    NoSuchAction,
    NoSuchObjectInstance,
    ProcessingFailure,
    UnrecognizedOperation,
)
from pacsd.index.commitment import (
    add_request,
    due_now,
    due_requests,
    mark_delivered,
    next_due,
    reschedule,
    save_result,
    verify,
)
from pacsd.index.database import IndexDatabase
from pacsd.logs import get_logger
from pacsd.net.handle import ClientHandle
from pacsd.net.sockets import on_connection_open
from pacsd.net.tls import tls_args_for
from pacsd.services.guard import NormalizedResult
from pacsd.services.retrieve import pause_reactor
from pacsd.settings import CommitmentSettings, Peer
from pacsd.storage.filesystem import FilesystemStore

PUSH_MODEL = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
REQUEST_COMMITMENT = 1  # Action Type ID, PS3.4 J.3.2.1
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID, PS3.4 J.3.3.1
MAX_WAIT_S = 5.0
PAUSE_TIMEOUT_S = 10.0
REPORT_TIMEOUT_S = 30.0
POLL_S = 0.1  # how often a report sent on the same association checks that it is still open
REPORT_MESSAGE_ID = 1

log = get_logger("pacsd.commitment")


class DeliveryFailed(Exception):
    """The report could not be delivered this time; the reason is for the log."""


def requested_references(info: Dataset) -> list[tuple[str, str]]:
    """The (SOP Class UID, SOP Instance UID) pairs of an N-ACTION's Action Information."""
    if not str(info.get("TransactionUID", "") or ""):
        raise MissingAttribute("TransactionUID missing")
    items = list(info.get("ReferencedSOPSequence") or [])
    if not items:
        raise MissingAttribute("ReferencedSOPSequence missing or empty")
    pairs = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not sop_class or not sop_instance:
            raise MissingAttribute("a ReferencedSOPSequence item lacks a UID")
        pairs.append((sop_class, sop_instance))
    return pairs


def report_dataset(transaction_uid: str, result: Mapping[str, Any], ae_title: str) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.RetrieveAETitle = ae_title
    success = [_reference(sop_class, sop_instance) for sop_class, sop_instance in result["success"]]
    failed = [_reference(*failure) for failure in result["failed"]]
    if success:
        ds.ReferencedSOPSequence = Sequence(success)
    if failed:
        ds.FailedSOPSequence = Sequence(failed)
    return ds


def _reference(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
    if reason is not None:
        item.FailureReason = int(reason)
    return item


class CommitmentWorker:
    """Checks pending requests and delivers their reports, in its own thread."""

    def __init__(
        self,
        index: IndexDatabase,
        files: FilesystemStore,
        peers: Callable[[], Mapping[str, Peer]],
        settings: CommitmentSettings,
        ae_title: str,
    ) -> None:
        self.index, self.files, self.peers = index, files, peers
        self.settings, self.ae_title = settings, ae_title
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._associations: dict[str, weakref.ref[Association]] = {}
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)

    def start(self) -> None:
        """Start delivering; requests left pending by an earlier run are retried at once."""
        pending = due_now(self.index)
        if pending:
            log.info("commitment reports pending from an earlier run", requests=pending)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the delivery in progress, waiting at most `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, transaction_uid: str, assoc: Association) -> None:
        """A new request: remember its association, and look at it now.

        Not started (a worker other than worker 0): the leading worker finds the request in
        the database and reports on a new association.
        """
        if not self._thread.is_alive():
            return
        if self.settings.report_on_same_association:
            with self._lock:
                self._associations[transaction_uid] = weakref.ref(assoc)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._deliver_due()
                wait = self._seconds_to_next()
            except Exception:
                log.exception("commitment worker failed; retrying")
                wait = MAX_WAIT_S
            self._wake.wait(wait)
            self._wake.clear()

    def _seconds_to_next(self) -> float:
        due = next_due(self.index)
        if due is None:
            return MAX_WAIT_S
        return min(MAX_WAIT_S, max(0.0, (due - datetime.now(UTC)).total_seconds()))

    def _deliver_due(self) -> None:
        for pending in due_requests(self.index):
            if self._stopping.is_set():
                return
            result = pending.result
            if result is None:
                result = verify(self.index, self.files.absolute, pending.references)
                save_result(self.index, pending.transaction_uid, result)
            fields = {
                "transaction_uid": pending.transaction_uid,
                "calling_ae_title": pending.calling_ae_title,
                "committed": len(result["success"]),
                "failed": len(result["failed"]),
            }
            try:
                how = self._deliver(pending.transaction_uid, pending.calling_ae_title, result)
            except DeliveryFailed as exc:
                delay = self._backoff(pending.attempts)
                reschedule(self.index, pending.transaction_uid, delay, str(exc))
                log.warning(
                    "commitment report not delivered; will retry",
                    reason=str(exc),
                    retry_in_s=round(delay, 1),
                    attempts=pending.attempts + 1,
                    **fields,
                )
                continue
            mark_delivered(self.index, pending.transaction_uid)
            with self._lock:
                self._associations.pop(pending.transaction_uid, None)
            log.info("commitment report delivered", delivered_on=how, **fields)

    def _backoff(self, attempts: int) -> float:
        return float(min(self.settings.retry_max, self.settings.retry_initial * 2**attempts))

    def _deliver(self, transaction_uid: str, calling: str, result: Mapping[str, Any]) -> str:
        report = report_dataset(transaction_uid, result, self.ae_title)
        event_type = SOME_FAILED if result["failed"] else ALL_COMMITTED
        with self._lock:
            reference = self._associations.get(transaction_uid)
        assoc = reference() if reference is not None else None
        if (
            assoc is not None
            and assoc.is_established
            and pause_reactor(assoc, PAUSE_TIMEOUT_S)
            and _send_between_requests(assoc, report, event_type)
        ):
            return "same association"
        return self._deliver_on_new_association(calling, report, event_type)

    def _deliver_on_new_association(self, calling: str, report: Dataset, event_type: int) -> str:
        peer = self.peers().get(calling)
        if peer is None:
            raise DeliveryFailed(f"{calling} is not in the AE table (peers)")
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(PUSH_MODEL)
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=[build_role(PUSH_MODEL, scu_role=False, scp_role=True)],
            evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],
            tls_args=tls_args_for(peer),  # DICOM TLS to a peer marked `tls` (net/tls.py)
        )
        if not assoc.is_established:
            raise DeliveryFailed(f"no association with {peer.ae_title} at {peer.host}:{peer.port}")
        try:
            if not self._send(assoc, report, event_type):
                raise DeliveryFailed(f"{peer.ae_title} did not acknowledge the report")
        finally:
            if assoc.is_established:
                assoc.release()
        return "new association"

    @staticmethod
    def _send(assoc: Association, report: Dataset, event_type: int) -> bool:
        try:
            status, _reply = assoc.send_n_event_report(
                report, event_type, PUSH_MODEL, WELL_KNOWN_INSTANCE
            )
        except (RuntimeError, ValueError) as exc:
            assoc._reactor_checkpoint.set()  # never leave the reactor stopped
            log.warning("commitment report could not be sent", reason=str(exc))
            return False
        return int(status.get("Status", 0xFFFF)) == 0x0000


def _send_between_requests(assoc: Association, report: Dataset, event_type: int) -> bool:
    """N-EVENT-REPORT on an association whose reactor `pause_reactor` has stopped.

    The requester may send its next request before it answers the report; pynetdicom's
    send_n_event_report would take that request for the answer. Here any request that arrives
    meanwhile is put back on the DIMSE queue, in order, for the reactor to serve once resumed.
    """
    stashed: list[Any] = []
    try:
        context = next(
            c for c in assoc.accepted_contexts if c.abstract_syntax == PUSH_MODEL and c.as_scp
        )
        syntax = context.transfer_syntax[0]
        request = N_EVENT_REPORT()
        request.MessageID = REPORT_MESSAGE_ID
        request.AffectedSOPClassUID = PUSH_MODEL
        request.AffectedSOPInstanceUID = WELL_KNOWN_INSTANCE
        request.EventTypeID = event_type
        encoded = encode(report, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        if encoded is None:
            raise ValueError("the report does not encode")
        request.EventInformation = BytesIO(encoded)
        assoc.dimse.send_msg(request, cast(int, context.context_id))
        deadline = time.monotonic() + float(assoc.dimse_timeout or REPORT_TIMEOUT_S)
        while _still_open(assoc) and time.monotonic() < deadline:
            # Short waits, not get_msg(block=True), which waits out the whole DIMSE timeout.
            try:
                context_id, message = assoc.dimse.msg_queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(message, N_EVENT_REPORT) and not message.is_valid_request:
                return int(message.Status or 0) == 0x0000
            stashed.append((context_id, message))
        return False
    except (StopIteration, RuntimeError, ValueError) as exc:
        log.warning("commitment report could not be sent", reason=repr(exc))
        return False
    finally:
        for item in stashed:
            assoc.dimse.msg_queue.put(item)
        assoc._reactor_checkpoint.set()


def _still_open(assoc: Association) -> bool:
    """Whether a report sent on `assoc` can still be answered.

    The paused reactor does not handle the requester's A-RELEASE-RQ, so `is_established` stays
    True; the release (or abort) waiting on the DUL's queue says the requester is leaving, and
    a requester ignores N-EVENT-REPORTs while it releases (pynetdicom does).
    """
    leaving = isinstance(assoc.dul.peek_next_pdu(), (A_RELEASE, A_ABORT, A_P_ABORT))
    return assoc.is_established and assoc.dul.is_alive() and not leaving


class CommitmentService:
    """N-ACTION (Request Storage Commitment) SCP."""

    def __init__(self, index: IndexDatabase, worker: CommitmentWorker) -> None:
        self.index = index
        self.worker = worker

    def on_n_action(self, event: Event, handle: ClientHandle) -> NormalizedResult:
        """Store the request and answer Success; the worker reports."""
        request = cast(N_ACTION, event.request)
        if str(request.RequestedSOPClassUID) != PUSH_MODEL:
            raise UnrecognizedOperation(f"N-ACTION on {request.RequestedSOPClassUID}")
        if request.ActionTypeID != REQUEST_COMMITMENT:
            raise NoSuchAction(f"action type {request.ActionTypeID} (only 1: request)")
        if str(request.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
            raise NoSuchObjectInstance(f"use the well-known instance {WELL_KNOWN_INSTANCE}")
        try:
            info: Dataset = event.action_information
        except Exception as exc:
            raise ProcessingFailure(f"action information cannot be decoded: {exc}") from None
        references = requested_references(info)
        transaction = str(info.TransactionUID)
        add_request(self.index, transaction, handle.calling_ae_title, references)
        self.worker.submit(transaction, event.assoc)
        handle.log.info(
            "storage commitment requested", transaction_uid=transaction, instances=len(references)
        )
        return 0x0000, None
