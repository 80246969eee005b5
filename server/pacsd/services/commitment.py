"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION handler checks the request, stores it in the index and answers Success at once;
the report is the worker's job, never the handler's. The worker checks every referenced
instance (index row, file present, SHA-256 as stored), keeps the outcome, and has the engine
send the N-EVENT-REPORT (event 1: all committed; event 2: with the Failed SOP Sequence):
- on the requesting association when it is still open and `commitment.report_on_same_association`
  is on (the engine interleaves it with the requester's own requests);
- otherwise on a new association to the requester's address from the AE table, proposing the
  SCP role for the Storage Commitment Push Model SOP class (PS3.4 J.3.3, PS3.7 D.3.3.4).
A failed delivery is retried with exponential back-off; pending requests are in the database,
so a restarted pacsd delivers them. A report still undelivered `commitment.report_lifetime`
after its request, or after `commitment.max_attempts` failed deliveries, is given up (logged
and audited), as UPS event reports are after `ups.report_lifetime` (services/ups.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsd import audit
from pacsd.dimse.commands import ACTION_TYPE_ID
from pacsd.dimse.messages import Request
from pacsd.errors import (
    MissingAttribute,
    NoSuchAction,
    NoSuchObjectInstance,
    ProcessingFailure,
    UnrecognizedOperation,
)
from pacsd.handle import ClientHandle
from pacsd.index.cluster import Claim
from pacsd.index.commitment import (
    GIVEN_UP,
    Pending,
    add_request,
    due_now,
    due_requests,
    end_requests,
    mark_delivered,
    next_due,
    reschedule,
    save_result,
    verify,
)
from pacsd.index.database import IndexDatabase
from pacsd.logs import get_logger
from pacsd.services.guard import OperationResult
from pacsd.settings import CommitmentSettings, Peer
from pacsd.storage.base import InstanceStore

PUSH_MODEL = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
REQUEST_COMMITMENT = 1  # Action Type ID, PS3.4 J.3.2.1
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID, PS3.4 J.3.3.1
MAX_WAIT_S = 5.0

log = get_logger("pacsd.commitment")


class DeliveryFailed(Exception):
    """The report could not be delivered this time; the reason is for the log."""


class ReportDelivery(Protocol):
    """How the engine puts an N-EVENT-REPORT on the wire (blocking the worker's thread)."""

    def on_same_association(self, association_id: str, report: Dataset, event_type: int) -> bool:
        """Send it on that (acceptor) association if it is still open with a context for the
        report; True once the requester acknowledged it with Success."""
        ...

    def on_new_association(self, peer: Peer, report: Dataset, event_type: int) -> None:
        """Send it on a new association to `peer`; DeliveryFailed when that did not work."""
        ...


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
        files: InstanceStore,
        peers: Callable[[], Mapping[str, Peer]],
        settings: CommitmentSettings,
        ae_title: str,
    ) -> None:
        self.index, self.files, self.peers = index, files, peers
        self.settings, self.ae_title = settings, ae_title
        self.delivery: ReportDelivery | None = None  # the engine's, set before `start`
        # Cluster mode (index/cluster.py): this node claims the requests it delivers.
        self.claim: Claim | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._associations: dict[str, str] = {}  # transaction UID -> association ID
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)

    def start(self) -> None:
        """Start delivering; requests left pending by an earlier run are retried at once."""
        pending = due_now(self.index, self.claim)
        if pending:
            log.info("commitment reports pending from an earlier run", requests=pending)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the delivery in progress, waiting at most `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, transaction_uid: str, association_id: str) -> None:
        """A new request: remember its association, and look at it now.

        Not started (a worker other than worker 0): the leading worker finds the request in
        the database and reports on a new association.
        """
        if not self._thread.is_alive():
            return
        if self.settings.report_on_same_association:
            with self._lock:
                self._associations[transaction_uid] = association_id
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
        due = next_due(self.index, self.claim)
        if due is None:
            return MAX_WAIT_S
        return min(MAX_WAIT_S, max(0.0, (due - datetime.now(UTC)).total_seconds()))

    def _deliver_due(self) -> None:
        for pending in due_requests(self.index, claim=self.claim):
            if self._stopping.is_set():
                return
            lifetime = timedelta(seconds=self.settings.report_lifetime)
            if datetime.now(UTC) - pending.requested_at > lifetime:
                lived = f"undelivered after {self.settings.report_lifetime:g} s"
                self._give_up(pending, pending.attempts, lived)
                continue
            result = pending.result
            if result is None:
                result = verify(self.index, self.files.open, pending.references)
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
                limit = self.settings.max_attempts
                if limit is not None and pending.attempts + 1 >= limit:
                    self._give_up(pending, limit, f"{limit} attempts failed, the last: {exc}")
                    continue
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

    def _give_up(self, pending: Pending, attempts: int, reason: str) -> None:
        """No more attempts: the request leaves the queue (kept as given up), logged, audited."""
        if not end_requests(self.index, [pending.transaction_uid], GIVEN_UP, reason):
            return  # cancelled meanwhile
        with self._lock:
            self._associations.pop(pending.transaction_uid, None)
        log.warning(
            "commitment report given up",
            transaction_uid=pending.transaction_uid,
            calling_ae_title=pending.calling_ae_title,
            attempts=attempts,
            reason=reason,
        )
        transaction = (pending.transaction_uid, len(pending.references))
        audit.commitment_report_ended(pending.calling_ae_title, transaction, f"given up: {reason}")

    def _deliver(self, transaction_uid: str, calling: str, result: Mapping[str, Any]) -> str:
        report = report_dataset(transaction_uid, result, self.ae_title)
        event_type = SOME_FAILED if result["failed"] else ALL_COMMITTED
        delivery = self.delivery
        if delivery is None:
            raise DeliveryFailed("no engine to deliver the report")
        with self._lock:
            association_id = self._associations.get(transaction_uid)
        if association_id is not None and delivery.on_same_association(
            association_id, report, event_type
        ):
            return "same association"
        peer = self.peers().get(calling)
        if peer is None:
            raise DeliveryFailed(f"{calling} is not in the AE table (peers)")
        delivery.on_new_association(peer, report, event_type)
        return "new association"


class CommitmentService:
    """N-ACTION (Request Storage Commitment) SCP."""

    def __init__(self, index: IndexDatabase, worker: CommitmentWorker) -> None:
        self.index = index
        self.worker = worker

    def on_n_action(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Store the request and answer Success; the worker reports."""
        if request.sop_class_uid != PUSH_MODEL:
            raise UnrecognizedOperation(f"N-ACTION on {request.sop_class_uid}")
        action_type = request.command.number(ACTION_TYPE_ID)
        if action_type != REQUEST_COMMITMENT:
            raise NoSuchAction(f"action type {action_type} (only 1: request)")
        if request.sop_instance_uid != WELL_KNOWN_INSTANCE:
            raise NoSuchObjectInstance(f"use the well-known instance {WELL_KNOWN_INSTANCE}")
        try:
            info = request.dataset()
        except Exception as exc:
            raise ProcessingFailure(f"action information cannot be decoded: {exc}") from None
        references = requested_references(info)
        transaction = str(info.TransactionUID)
        add_request(self.index, transaction, handle.calling_ae_title, references, self.worker.claim)
        self.worker.submit(transaction, handle.association_id)
        handle.log.info(
            "storage commitment requested", transaction_uid=transaction, instances=len(references)
        )
        return OperationResult(0x0000)
