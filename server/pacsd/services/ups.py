"""Unified Procedure Step SCP (PS3.4 Annex CC): UPS Push, Pull, Watch, Query and Event.

N-CREATE, N-SET, N-GET, N-ACTION and C-FIND run in the work pool like MPPS; the rules are
dicom/ups, the workitems, subscriptions and queued event reports index/ups. A change and the
reports it causes are committed together, and `UpsEventWorker` (its own thread, in the leading
process only) delivers the reports: on an association the subscriber has open with a UPS Event
context (`ups.report_on_open_association`), else on a new association to its `peers` entry,
proposing the SCP role for the UPS Event SOP Class (PS3.7 D.3.3.4). Reports to one AE keep
their order; an undelivered one is retried with back-off, survives a restart, and is given up
after `ups.report_lifetime` (CC.2.4.3 obliges no retry at all).

Every UPS N-service message names the UPS Push SOP Class (CC.3.1). pacsd takes N-SET, N-GET and
N-ACTION on a UPS Push, Pull or Watch context whatever UPS SOP class they name, as SCUs in the
field send them; N-CREATE only as UPS Push, C-FIND on Pull, Watch and Query contexts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsd.dicom.find_response import choose_charset, response_json
from pacsd.dicom.matching import TIMEZONE_OFFSET_FROM_UTC, parse_identifier
from pacsd.dicom.part10 import IMPLEMENTATION_CLASS_UID
from pacsd.dicom.ups import (
    CHANGE_STATE,
    DELETION_LOCK_NOT_GRANTED,
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_INSTANCES,
    GLOBAL_SUBSCRIPTION,
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED,
    REQUEST_CANCEL,
    SCP_STATUS_CHANGE,
    SUBSCRIBE,
    SUSPEND_GLOBAL,
    TRANSACTION_UID,
    UNSUBSCRIBE,
    UPS_PULL,
    UPS_PUSH,
    UPS_QUERY,
    UPS_WATCH,
    NoSuchWorkitem,
    Report,
    UnknownReceivingAE,
    apply_n_set,
    change_state,
    creation_reports,
    prepare_create,
    request_cancel,
    scp_status_report,
    subscription_request,
)
from pacsd.dimse import commands as c
from pacsd.dimse.messages import Request
from pacsd.errors import NoSuchAction, ProcessingFailure, UnrecognizedOperation
from pacsd.handle import ClientHandle
from pacsd.index import ups as index
from pacsd.index.cluster import ArchiveBusy, Claim, archive_lock
from pacsd.index.database import IndexDatabase
from pacsd.logs import get_logger
from pacsd.services.commitment import DeliveryFailed
from pacsd.services.guard import Operation, OperationResult, StreamOperation, StreamReport
from pacsd.services.ports import OperationPort
from pacsd.services.query import (
    PENDING,
    PENDING_KEYS_UNSUPPORTED,
    charset_terms,
    decoded_identifier,
    match_options,
    query_zone,
    stream_matches,
)
from pacsd.settings import Peer, QuerySettings, UpsSettings

_UID_ROOT = f"{IMPLEMENTATION_CLASS_UID}.4."
_N_SERVICE_CONTEXTS = frozenset({UPS_PUSH, UPS_PULL, UPS_WATCH})
_FIND_CONTEXTS = frozenset({UPS_PULL, UPS_WATCH, UPS_QUERY})  # PS3.4 CC.2.8.1.2.1
_UPS_CLASSES = _N_SERVICE_CONTEXTS | _FIND_CONTEXTS
MAX_WAIT_S = 5.0
BATCH = 50  # reports sent to one AE on one association before the queue is looked at again

log = get_logger("pacsd.ups")


@dataclass(frozen=True)
class EventReport:
    """One N-EVENT-REPORT to put on the wire (Affected SOP Class: UPS Push, CC.2.4.3)."""

    sop_instance_uid: str
    event_type: int
    information: Dataset


class EventDelivery(Protocol):
    """How the engine delivers UPS event reports (blocking the worker's thread). Each returns
    (how many were acknowledged with Success, in order; why the next one was not)."""

    def on_open_association(
        self, ae_title: str, reports: Sequence[EventReport]
    ) -> tuple[int, str] | None:
        """Send them on an association `ae_title` has open with a UPS Event context where
        pacsd is SCP; None when there is none."""
        ...

    def on_new_association(self, peer: Peer, reports: Sequence[EventReport]) -> tuple[int, str]:
        """Send them on a new association to `peer`; DeliveryFailed when none can be made."""
        ...


class UpsEventWorker:
    """Delivers the queued UPS event reports, in its own thread, and deletes final workitems
    that no deletion lock holds any more."""

    def __init__(
        self,
        database: IndexDatabase,
        peers: Callable[[], Mapping[str, Peer]],
        settings: UpsSettings,
    ) -> None:
        self.database, self.peers, self.settings = database, peers, settings
        self.delivery: EventDelivery | None = None  # the engine's, set before `start`
        # Cluster mode (index/cluster.py): this node claims an AE's reports before sending.
        self.claim: Claim | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ups-events", daemon=True)

    def start(self) -> None:
        """Start delivering, in the worker's thread (the event loop does no database work)."""
        self._thread.start()

    def _restarted(self) -> None:
        """Reports pending from an earlier run are due at once; the SCP Status Change report
        (RESTARTED, CC.2.4.3) goes to every subscriber and to the fallback list."""
        pending = index.due_now(self.database, self.claim)
        if pending:
            log.info("UPS event reports pending from an earlier run", reports=pending)
        recipients = index.subscriber_ae_titles(self.database)
        recipients |= set(self.settings.fallback_subscribers)
        if recipients:
            restarted = Report(SCP_STATUS_CHANGE, scp_status_report())
            index.queue_reports(self.database, GLOBAL_SUBSCRIPTION, sorted(recipients), [restarted])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the delivery in progress, waiting at most `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """New reports are queued (a no-op in a process whose worker does not run)."""
        self._wake.set()

    def _run(self) -> None:
        try:
            self._restarted()
        except Exception:
            log.exception("UPS event worker could not announce the restart")
        while not self._stopping.is_set():
            try:
                for ae_title in index.due_ae_titles(self.database, self.claim):
                    if self._stopping.is_set():
                        return
                    self._deliver_to(ae_title)
                self._purge()
                wait = self._seconds_to_next()
            except Exception:
                log.exception("UPS event worker failed; retrying")
                wait = MAX_WAIT_S
            self._wake.wait(wait)
            self._wake.clear()

    def _seconds_to_next(self) -> float:
        due = index.next_due(self.database, self.claim)
        if due is None:
            return MAX_WAIT_S
        return min(MAX_WAIT_S, max(0.0, (due - datetime.now(UTC)).total_seconds()))

    def _deliver_to(self, ae_title: str) -> None:
        if self.claim is None:
            queued = index.pending_reports(self.database, ae_title, BATCH)
        else:
            queued = index.claim_reports(self.database, ae_title, BATCH, self.claim)
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.report_lifetime)
        expired = [report.pk for report in queued if report.created_at < cutoff]
        if expired:
            index.remove_reports(self.database, expired)
            log.warning("UPS event reports given up", ae_title=ae_title, reports=len(expired))
        live = [report for report in queued if report.created_at >= cutoff]
        if not live:
            return
        outgoing = [
            EventReport(report.sop_instance_uid, report.event_type, _information(report))
            for report in live
        ]
        delivered, problem, how = self._deliver(ae_title, outgoing)
        index.remove_reports(self.database, [report.pk for report in live[:delivered]])
        fields: dict[str, Any] = {"ae_title": ae_title}
        if delivered:
            types = [report.event_type for report in live[:delivered]]
            log.info("UPS event reports delivered", delivered_on=how, event_types=types, **fields)
        if delivered < len(live):
            delay = self._backoff(live[delivered].attempts)
            index.reschedule(self.database, ae_title, delay, problem)
            log.warning(
                "UPS event report not delivered; will retry",
                reason=problem,
                retry_in_s=round(delay, 1),
                attempts=live[delivered].attempts + 1,
                **fields,
            )

    def _deliver(self, ae_title: str, reports: list[EventReport]) -> tuple[int, str, str]:
        """(delivered, why not the rest, how): the open association first, then a new one."""
        delivery = self.delivery
        if delivery is None:
            return 0, "no engine to deliver the reports", ""
        done = 0
        try:
            if self.settings.report_on_open_association:
                sent = delivery.on_open_association(ae_title, reports)
                done = sent[0] if sent is not None else 0
                if done == len(reports):
                    return done, "", "open association"
            peer = self.peers().get(ae_title)
            if peer is None:
                return done, f"{ae_title} is not in the AE table (peers)", "open association"
            count, problem = delivery.on_new_association(peer, reports[done:])
        except DeliveryFailed as exc:
            return done, str(exc), "open association"
        except TimeoutError:
            return done, f"no answer from {ae_title} in time", "open association"
        return done + count, problem, "new association"

    def _backoff(self, attempts: int) -> float:
        return float(min(self.settings.retry_max, self.settings.retry_initial * 2**attempts))

    def _purge(self) -> None:
        before = datetime.now(UTC) - timedelta(seconds=self.settings.keep_final)
        try:
            with (
                archive_lock(self.database, "ups-purge", pooled=True)
                if self.claim
                else nullcontext()
            ):
                removed = index.purge_final(self.database, before)  # one node at a time
        except ArchiveBusy:
            return
        if removed:
            log.info("final workitems deleted", workitems=len(removed))


def _information(report: index.PendingReport) -> Dataset:
    """The Event Information to send, in UTF-8 when it holds more than ASCII."""
    information = Dataset.from_json(report.information)
    charset = choose_charset(report.information, [])
    if charset:
        information.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in information:
        del information.SpecificCharacterSet
    return information


class UpsService:
    """The UPS SCP's N-CREATE, N-SET, N-GET, N-ACTION and C-FIND."""

    def __init__(
        self,
        database: IndexDatabase,
        events: UpsEventWorker,
        settings: UpsSettings,
        query: QuerySettings,
        ae_title: str,
    ) -> None:
        self.database, self.events = database, events
        self.settings, self.query = settings, query
        self.worklist_label = settings.worklist_label or ae_title

    def simple_routes(self) -> dict[tuple[int, str], Operation]:
        """The engine's routes to the N-services (engine/operations.Services.simple)."""
        return {
            (c.N_CREATE_RQ, "ups"): self.on_n_create,
            (c.N_SET_RQ, "ups"): self.on_n_set,
            (c.N_GET_RQ, "ups"): self.on_n_get,
            (c.N_ACTION_RQ, "ups"): self.on_n_action,
        }

    def stream_routes(self) -> dict[tuple[int, str], StreamOperation]:
        """The engine's route to C-FIND (engine/operations.Services.streams)."""
        return {(c.C_FIND_RQ, "ups"): self.on_c_find}

    def on_n_create(self, request: Request, handle: ClientHandle) -> OperationResult:
        """CC.2.5: a new SCHEDULED workitem; its global subscribers are told."""
        context = request.context.abstract_syntax
        if request.sop_class_uid != UPS_PUSH or context != UPS_PUSH:
            # CC.2.5: N-CREATE belongs to UPS Push alone, on a context that negotiated it.
            raise UnrecognizedOperation(f"N-CREATE is not a service of {context}")
        attributes = _decoded(request, "attribute list")
        # CC.2.5.2: the SCU names the UID; when it does not, pacsd does (PS3.7 10.1.5.1.4).
        generated = "" if request.sop_instance_uid else generate_uid(_UID_ROOT)
        uid = request.sop_instance_uid or generated
        stored, status = prepare_create(attributes, uid, _now(), self.worklist_label)
        reports = creation_reports(stored)
        subscribers = index.create_workitem(
            self.database, uid, stored, handle.calling_ae_title, reports
        )
        if subscribers:
            self.events.wake()
        handle.log.info("UPS workitem created", sop_instance_uid=uid, subscribers=subscribers)
        return OperationResult(status, affected_sop_instance_uid=generated)

    def on_n_set(self, request: Request, handle: ClientHandle) -> OperationResult:
        """CC.2.6: the performer (or anyone, while SCHEDULED) changes the workitem."""
        _n_service(request)
        modification = _decoded(request, "modification list")
        now = _now()
        outcome = index.update_workitem(
            self.database,
            request.sop_instance_uid,
            lambda item, _subscribers: apply_n_set(item, modification, now),
        )
        self._reported(outcome.reports)
        handle.log.info("UPS workitem updated", sop_instance_uid=request.sop_instance_uid)
        return OperationResult(outcome.status)

    def on_n_get(self, request: Request, handle: ClientHandle) -> OperationResult:
        """CC.2.7: the requested attributes (all when none are named), never the Transaction
        UID (CC.2.7.3: 0x0001 when it is asked for)."""
        _n_service(request)
        stored = index.read_workitem(self.database, request.sop_instance_uid)
        wanted = request.command.tags(c.ATTRIBUTE_IDENTIFIER_LIST)
        if not wanted:
            return OperationResult(0x0000, dataset=stored)
        result, status = Dataset(), 0x0000
        if "SpecificCharacterSet" in stored:
            result.SpecificCharacterSet = stored.SpecificCharacterSet
        for tag in wanted:
            if tag == TRANSACTION_UID:
                status = OPTIONAL_ATTRIBUTES_NOT_SUPPORTED
            elif tag in stored:
                result[tag] = stored[tag]
            else:
                _add_empty(result, tag)
        return OperationResult(status, dataset=result)

    def on_n_action(self, request: Request, handle: ClientHandle) -> OperationResult:
        """Change UPS State (1), Request UPS Cancel (2), (un)subscribe (3, 4), suspend (5)."""
        _n_service(request)
        action = request.command.number(c.ACTION_TYPE_ID)
        info = _decoded(request, "action information", optional=True)
        uid, calling = request.sop_instance_uid, handle.calling_ae_title
        if action in (SUBSCRIBE, UNSUBSCRIBE, SUSPEND_GLOBAL):
            return self._subscription(action, uid, info, handle)
        if action not in (CHANGE_STATE, REQUEST_CANCEL):
            raise NoSuchAction(f"action type {action} (UPS: 1 to 5)")
        if uid in GLOBAL_INSTANCES:
            raise NoSuchWorkitem(f"{uid} is a subscription instance, not a workitem")
        now = _now()
        outcome = index.update_workitem(
            self.database,
            uid,
            lambda item, subscribers: (
                change_state(item, info, calling, now)
                if action == CHANGE_STATE
                else request_cancel(item, info, calling, bool(subscribers), now)
            ),
        )
        self._reported(outcome.reports)
        handle.log.info(
            "UPS workitem state" if action == CHANGE_STATE else "UPS cancel requested",
            sop_instance_uid=uid,
            procedure_step_state=outcome.item.state,
            status=f"0x{outcome.status:04X}",
        )
        return OperationResult(outcome.status)

    def _subscription(
        self, action: int, uid: str, info: Dataset, handle: ClientHandle
    ) -> OperationResult:
        """CC.2.3.3: the Receiving AE's Global or UPS Subscription State (Table CC.2.3-2)."""
        receiving, lock, keys = subscription_request(action, uid, info)
        if action == SUBSCRIBE and receiving not in self.events.peers():
            raise UnknownReceivingAE(f"Receiving AE {receiving} is not in the AE table (peers)")
        status = 0x0000
        if lock and not self.settings.deletion_locks:
            lock, status = False, DELETION_LOCK_NOT_GRANTED
        if uid not in GLOBAL_INSTANCES:
            if action == SUBSCRIBE:
                index.subscribe(self.database, uid, receiving, lock)
            else:
                index.unsubscribe(self.database, uid, receiving)
        elif action == SUBSCRIBE:
            filtered = keys if uid == FILTERED_GLOBAL_SUBSCRIPTION else None
            index.subscribe_globally(self.database, receiving, lock, filtered)
        elif action == UNSUBSCRIBE:
            index.unsubscribe_globally(self.database, receiving)
        else:
            index.suspend_global(self.database, receiving)
        self.events.wake()
        handle.log.info(
            "UPS subscription", action_type=action, sop_instance_uid=uid, receiving_ae=receiving
        )
        return OperationResult(status)

    def on_c_find(
        self, request: Request, handle: ClientHandle, report: StreamReport, port: OperationPort
    ) -> None:
        """CC.2.8: one pending response per matching workitem (the Worklist Search Method)."""
        if request.context.abstract_syntax not in _FIND_CONTEXTS:
            raise UnrecognizedOperation("C-FIND is a service of UPS Pull, Watch and Query")
        identifier = decoded_identifier(request)
        options = match_options(self.query, request, handle)
        zone = query_zone(request, identifier)
        unmatched = (
            [TIMEZONE_OFFSET_FROM_UTC] if request.context.extended.timezone_adjustment else []
        )
        keys = parse_identifier(identifier, options, unmatched=unmatched)
        # Table CC.2.5-3: the Transaction UID cannot be queried; it comes back empty.
        refused = [key for key in keys if not key.supported or key.tag == TRANSACTION_UID]
        usable = [key for key in keys if key not in refused]
        report.fields.update(model="Unified Procedure Step", matches=0)
        if refused:
            report.fields["unsupported_keys"] = [key.keyword for key in refused]
        found = index.find_workitems(self.database, usable, zone=zone)
        documents = (response_json(keys, document, {}) for document in found)
        pending = PENDING_KEYS_UNSUPPORTED if refused else PENDING
        charset = charset_terms(identifier)
        stream_matches(request, report, port, documents, pending, charset, self.query)

    def _reported(self, reports: Sequence[Report]) -> None:
        if reports:
            self.events.wake()


def _n_service(request: Request) -> None:
    """N-SET, N-GET and N-ACTION: on a UPS Push, Pull or Watch context, naming a UPS class."""
    context = request.context.abstract_syntax
    if context not in _N_SERVICE_CONTEXTS or request.sop_class_uid not in _UPS_CLASSES:
        raise UnrecognizedOperation(f"{request.name} is not a service of {context}")


def _decoded(request: Request, name: str, optional: bool = False) -> Dataset:
    """The request's data set in text (its Specific Character Set applied); an N-ACTION may
    come without one (then its Action Information checks answer)."""
    if optional and not request.command.has_data_set:
        return Dataset()
    try:
        dataset = request.dataset()
        dataset.decode()
    except Exception as exc:
        raise ProcessingFailure(f"{name} cannot be decoded: {exc}") from None
    return dataset


def _add_empty(result: Dataset, tag: int) -> None:
    """A requested attribute the workitem lacks comes back with no value."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return
    result.add_new(tag, vr, [] if vr == "SQ" else None)


def _now() -> datetime:
    return datetime.now(UTC).astimezone()
