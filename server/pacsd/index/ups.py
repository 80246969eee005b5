"""Unified Procedure Steps in the index: workitems, subscriptions, and the event reports queue.

A workitem's attributes are kept whole (DICOM JSON, Transaction UID apart). A change runs under
the workitem's row lock and queues the event reports it causes in the same transaction, one row
per subscribed AE and report, so a report is never lost nor sent for a change that was rolled
back; the UPS event worker (services/ups.py) delivers them in order, per AE. Subscriptions
follow PS3.4 Table CC.2.3-2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from pacsd.dicom.header import header_json, index_text
from pacsd.dicom.matching import (
    JsonRecord,
    Key,
    MatchOptions,
    Record,
    ZonedRecord,
    parse_identifier,
)
from pacsd.dicom.ups import (
    FINAL_STATES,
    STATE_REPORT,
    NoSuchWorkitem,
    Outcome,
    Report,
    Workitem,
    state_report,
)
from pacsd.errors import DuplicateRejected
from pacsd.index.cluster import Claim, database_now, try_transaction_lock
from pacsd.index.database import IndexDatabase
from pacsd.index.models import (
    UpsEventReport,
    UpsGlobalSubscription,
    UpsSubscription,
    UpsWorkitem,
)
from pacsd.index.query import ZONE_MARGIN_DAYS, column_condition

Transition = Callable[[Workitem, Sequence[str]], Outcome]
_COLUMNS: Mapping[int, InstrumentedAttribute[Any]] = {
    int(Tag("SOPInstanceUID")): UpsWorkitem.sop_instance_uid,
    int(Tag("ProcedureStepState")): UpsWorkitem.state,
    int(Tag("ScheduledProcedureStepPriority")): UpsWorkitem.priority,
    int(Tag("InputReadinessState")): UpsWorkitem.input_readiness_state,
    int(Tag("WorklistLabel")): UpsWorkitem.worklist_label,
    int(Tag("PatientID")): UpsWorkitem.patient_id,
}


@dataclass(frozen=True)
class PendingReport:
    """An event report waiting for delivery."""

    pk: int
    ae_title: str
    sop_instance_uid: str
    event_type: int
    information: dict[str, Any]
    attempts: int
    created_at: datetime


def create_workitem(
    database: IndexDatabase,
    uid: str,
    attributes: Dataset,
    calling_ae_title: str,
    reports: Sequence[Report],
) -> list[str]:
    """Store a new SCHEDULED workitem; subscribe the global subscribers it matches (Table
    CC.2.3-2) and queue `reports` for them. Their AE titles; 0x0111 when the UID is taken."""
    now = datetime.now(UTC)
    row = UpsWorkitem(sop_instance_uid=uid, calling_ae_title=calling_ae_title, created_at=now)
    row.transaction_uid, row.performer_ae_title = "", ""
    _fill(row, attributes, now)
    try:
        with database.writing() as session:
            session.add(row)
            subscribers = []
            for subscription in session.scalars(select(UpsGlobalSubscription)):
                if _matches(subscription.match_keys, row.attributes):
                    row.subscriptions.append(
                        UpsSubscription(
                            ae_title=subscription.ae_title,
                            deletion_lock=subscription.deletion_lock,
                        )
                    )
                    subscribers.append(subscription.ae_title)
            _queue(session, uid, subscribers, reports, now)
    except IntegrityError:
        raise DuplicateRejected(f"a workitem {uid} exists already") from None
    return subscribers


def update_workitem(database: IndexDatabase, uid: str, transition: Transition) -> Outcome:
    """Apply `transition(workitem, subscribers)` under the row lock; queue its reports."""
    with database.writing() as session:
        row = _locked(session, uid)
        subscribers = [subscription.ae_title for subscription in row.subscriptions]
        outcome = transition(_workitem(row), subscribers)
        now = datetime.now(UTC)
        if outcome.changed:
            item = outcome.item
            row.state, row.transaction_uid = item.state, item.transaction_uid
            row.performer_ae_title = item.performer[:16]
            _fill(row, item.attributes, now)
        _queue(session, uid, subscribers, outcome.reports, now)
        return outcome


def read_workitem(database: IndexDatabase, uid: str) -> Dataset:
    """A workitem's attributes; 0xC307 when there is none."""
    with database.reading() as session:
        document = session.scalar(
            select(UpsWorkitem.attributes).where(UpsWorkitem.sop_instance_uid == uid)
        )
    if document is None:
        raise NoSuchWorkitem(f"no workitem {uid}")
    return Dataset.from_json(document)


def subscribe(database: IndexDatabase, uid: str, ae_title: str, lock: bool) -> None:
    """Subscribe an AE to one workitem (with or without lock) and queue its initial report."""
    with database.writing() as session:
        row = _locked(session, uid)
        _subscription(row, ae_title).deletion_lock = lock
        report = Report(STATE_REPORT, state_report(Dataset.from_json(row.attributes)))
        _queue(session, uid, [ae_title], [report], datetime.now(UTC))


def subscribe_globally(
    database: IndexDatabase, ae_title: str, lock: bool, match_keys: Dataset | None
) -> int:
    """Global Subscription (filtered with `match_keys`): every existing workitem it matches
    that the AE is not subscribed to gets a subscription, and an initial report when locked.
    How many it subscribed."""
    keys = header_json(match_keys) if match_keys is not None else None
    now = datetime.now(UTC)
    with database.writing() as session:
        subscription = session.scalars(
            select(UpsGlobalSubscription).where(UpsGlobalSubscription.ae_title == ae_title)
        ).one_or_none()
        if subscription is None:
            subscription = UpsGlobalSubscription(ae_title=ae_title)
            session.add(subscription)
        subscription.deletion_lock, subscription.match_keys = lock, keys
        subscribed = select(UpsSubscription.workitem_fk).where(UpsSubscription.ae_title == ae_title)
        count = 0
        rows = list(session.scalars(select(UpsWorkitem).where(UpsWorkitem.pk.not_in(subscribed))))
        for row in rows:
            if not _matches(keys, row.attributes):
                continue
            row.subscriptions.append(UpsSubscription(ae_title=ae_title, deletion_lock=lock))
            count += 1
            if lock:  # CC.2.4.3: initial reports for a Global Subscription with Lock only
                report = Report(STATE_REPORT, state_report(Dataset.from_json(row.attributes)))
                _queue(session, row.sop_instance_uid, [ae_title], [report], now)
        return count


def unsubscribe(database: IndexDatabase, uid: str, ae_title: str) -> None:
    """The AE no longer follows this workitem (nor holds its lock)."""
    with database.writing() as session:
        row = _locked(session, uid)
        row.subscriptions = [s for s in row.subscriptions if s.ae_title != ae_title]


def unsubscribe_globally(database: IndexDatabase, ae_title: str) -> int:
    """No Global Subscription, and no subscription to any workitem; how many were removed."""
    with database.writing() as session:
        session.execute(
            delete(UpsGlobalSubscription).where(UpsGlobalSubscription.ae_title == ae_title)
        )
        removed = session.execute(
            delete(UpsSubscription)
            .where(UpsSubscription.ae_title == ae_title)
            .returning(UpsSubscription.pk)
        )
        return len(list(removed))


def suspend_global(database: IndexDatabase, ae_title: str) -> None:
    """No Global Subscription; the subscriptions to workitems stay."""
    with database.writing() as session:
        session.execute(
            delete(UpsGlobalSubscription).where(UpsGlobalSubscription.ae_title == ae_title)
        )


def find_workitems(
    database: IndexDatabase, keys: Sequence[Key], zone: int | None = None, batch_size: int = 200
) -> Iterator[dict[str, Any]]:
    """The workitems (DICOM JSON) that match every key, in creation order; narrowed in SQL on
    the indexed attributes, checked exactly on the stored attributes."""
    matched = [key for key in keys if key.matcher is not None]
    widen = ZONE_MARGIN_DAYS if zone is not None else 0
    conditions = [clause for key in matched for clause in _conditions(key, widen)]
    statement = select(UpsWorkitem.pk, UpsWorkitem.attributes).where(*conditions)
    after = 0
    while True:
        with database.reading() as session:
            rows = list(
                session.execute(
                    statement.where(UpsWorkitem.pk > after)
                    .order_by(UpsWorkitem.pk)
                    .limit(batch_size)
                )
            )
        for _pk, document in rows:
            stored = JsonRecord(document)
            record: Record = stored if zone is None else ZonedRecord.of(stored, zone)
            if all(key.matcher is not None and key.matcher.matches(record) for key in matched):
                yield document
        if len(rows) < batch_size:
            return
        after = rows[-1][0]


def _conditions(key: Key, widen_days: int) -> list[ColumnElement[bool]]:
    column = _COLUMNS.get(key.tag)
    clause = column_condition(column, key, widen_days) if column is not None else None
    return [clause] if clause is not None else []


def purge_final(database: IndexDatabase, before: datetime) -> list[str]:
    """Delete COMPLETED and CANCELED workitems final since `before` that no deletion lock holds
    (PS3.4 CC.2.1.3); their UIDs. Looks first, so that an idle archive takes no write lock."""
    locked = select(UpsSubscription.workitem_fk).where(UpsSubscription.deletion_lock)
    statement = select(UpsWorkitem.pk).where(
        UpsWorkitem.state.in_(FINAL_STATES),
        UpsWorkitem.updated_at <= before,
        UpsWorkitem.pk.not_in(locked),
    )
    with database.reading() as session:
        candidates = list(session.scalars(statement.limit(500)))
    if not candidates:
        return []
    with database.writing() as session:
        rows = list(session.scalars(select(UpsWorkitem).where(UpsWorkitem.pk.in_(candidates))))
        rows = [row for row in rows if not any(s.deletion_lock for s in row.subscriptions)]
        for row in rows:
            session.delete(row)
        return [row.sop_instance_uid for row in rows]


def queue_reports(
    database: IndexDatabase, uid: str, ae_titles: Iterable[str], reports: Sequence[Report]
) -> None:
    """Queue reports not caused by a workitem change (SCP Status Change)."""
    with database.writing() as session:
        _queue(session, uid, list(ae_titles), reports, datetime.now(UTC))


def subscriber_ae_titles(database: IndexDatabase) -> set[str]:
    """Every AE with a Global Subscription or a subscription to a workitem."""
    with database.reading() as session:
        titles = set(session.scalars(select(UpsGlobalSubscription.ae_title)))
        return titles | set(session.scalars(select(UpsSubscription.ae_title).distinct()))


def due_ae_titles(database: IndexDatabase, claim: Claim | None = None) -> list[str]:
    """AEs whose oldest pending report is due: reports to one AE go in order (with `claim`,
    cluster mode: AEs whose reports no other node is delivering)."""
    now = datetime.now(UTC)
    return [ae for ae, due in _heads(database, claim) if due <= now]


def next_due(database: IndexDatabase, claim: Claim | None = None) -> datetime | None:
    """When the next AE's oldest pending report is due, if any."""
    return min((due for _ae, due in _heads(database, claim)), default=None)


def _heads(database: IndexDatabase, claim: Claim | None = None) -> list[tuple[str, datetime]]:
    oldest = (
        select(func.min(UpsEventReport.pk).label("pk")).group_by(UpsEventReport.ae_title).subquery()
    )
    statement = select(
        UpsEventReport.ae_title,
        UpsEventReport.next_attempt_at,
        UpsEventReport.claimed_by,
        UpsEventReport.claimed_until,
    ).join(oldest, UpsEventReport.pk == oldest.c.pk)
    with database.reading() as session:
        heads = list(session.execute(statement))
        if claim is None:
            return [(ae, _aware(due)) for ae, due, _by, _until in heads]
        now = database_now(session)
    # An AE whose oldest report another node holds is that node's until its claim lapses.
    return [
        (ae, _aware(due))
        for ae, due, by, until in heads
        if not claim.held_elsewhere(by, _aware(until) if until else None, now)
    ]


def pending_reports(database: IndexDatabase, ae_title: str, limit: int) -> list[PendingReport]:
    """An AE's pending reports, oldest first."""
    statement = (
        select(UpsEventReport)
        .where(UpsEventReport.ae_title == ae_title)
        .order_by(UpsEventReport.pk)
        .limit(limit)
    )
    with database.reading() as session:
        return [_pending_report(row) for row in session.scalars(statement)]


def claim_reports(
    database: IndexDatabase, ae_title: str, limit: int, claim: Claim
) -> list[PendingReport]:
    """Cluster mode: an AE's pending reports, oldest first, claimed for this node; none when
    another node holds the AE's oldest report (reports to one AE go in order, from one node).
    A transaction-level advisory lock per AE keeps two nodes from claiming it at once."""
    statement = (
        select(UpsEventReport)
        .where(UpsEventReport.ae_title == ae_title)
        .order_by(UpsEventReport.pk)
        .limit(limit)
        .with_for_update()
    )
    with database.writing() as session:
        if not try_transaction_lock(session, f"ups-events:{ae_title}"):
            return []
        now = database_now(session)
        rows = list(session.scalars(statement))
        if not rows:
            return []
        head = rows[0]
        until = _aware(head.claimed_until) if head.claimed_until else None
        if claim.held_elsewhere(head.claimed_by, until, now):
            return []
        session.execute(
            update(UpsEventReport)
            .where(UpsEventReport.pk.in_([row.pk for row in rows]))
            .values(claimed_by=claim.node, claimed_until=claim.until())
        )
        return [_pending_report(row) for row in rows]


def _pending_report(row: UpsEventReport) -> PendingReport:
    return PendingReport(
        row.pk,
        row.ae_title,
        row.sop_instance_uid,
        row.event_type,
        row.information,
        row.attempts,
        _aware(row.created_at),
    )


def remove_reports(database: IndexDatabase, pks: Sequence[int]) -> None:
    """Delivered (or given up): gone from the queue."""
    if pks:
        with database.writing() as session:
            session.execute(delete(UpsEventReport).where(UpsEventReport.pk.in_(pks)))


def reschedule(database: IndexDatabase, ae_title: str, delay_s: float, error: str) -> None:
    """A failed delivery to this AE: its oldest report counts an attempt; all its reports wait
    `delay_s` from now, claimed by no node."""
    moment = datetime.now(UTC) + timedelta(seconds=delay_s)
    with database.writing() as session:
        rows = list(
            session.scalars(
                select(UpsEventReport)
                .where(UpsEventReport.ae_title == ae_title)
                .order_by(UpsEventReport.pk)
            )
        )
        for index, row in enumerate(rows):
            row.next_attempt_at = moment
            row.claimed_by, row.claimed_until = None, None
            if index == 0:
                row.attempts += 1
                row.last_error = error[:256]


def due_now(database: IndexDatabase, claim: Claim | None = None) -> int:
    """Make every pending report due at once (start-up); how many there are. With `claim`
    (cluster mode), only those this node held when it stopped."""
    statement = select(UpsEventReport)
    if claim is not None:
        statement = statement.where(UpsEventReport.claimed_by == claim.node)
    with database.writing() as session:
        rows = list(session.scalars(statement))
        now = datetime.now(UTC)
        for row in rows:
            row.next_attempt_at = now
        return len(rows)


@dataclass(frozen=True)
class WorkitemSummary:
    """A workitem as an operator lists it."""

    sop_instance_uid: str
    state: str
    priority: str
    procedure_step_label: str
    worklist_label: str
    start: str
    patient_id: str
    patient_name: str
    performer: str
    subscribers: list[str]
    updated_at: str


@dataclass(frozen=True)
class QueueSummary:
    """The reports waiting for one AE."""

    ae_title: str
    reports: int
    oldest: str
    next_attempt: str
    attempts: int
    last_error: str


def list_workitems(database: IndexDatabase) -> list[WorkitemSummary]:
    """Every workitem, by scheduled start, with its subscribers ("AE (lock)" when locked)."""
    order = (UpsWorkitem.start_datetime, UpsWorkitem.pk)
    with database.reading() as session:
        return [
            WorkitemSummary(
                row.sop_instance_uid,
                row.state,
                row.priority,
                row.procedure_step_label,
                row.worklist_label,
                row.start_datetime,
                row.patient_id,
                row.patient_name,
                row.performer_ae_title,
                sorted(
                    s.ae_title + (" (lock)" if s.deletion_lock else "") for s in row.subscriptions
                ),
                _aware(row.updated_at).isoformat(timespec="seconds"),
            )
            for row in session.scalars(select(UpsWorkitem).order_by(*order))
        ]


def list_queues(database: IndexDatabase) -> list[QueueSummary]:
    """The pending reports, per AE: how many, and the oldest one's attempts."""
    ae_title = UpsEventReport.ae_title
    oldest = select(func.min(UpsEventReport.pk)).group_by(ae_title)
    with database.reading() as session:
        grouped = session.execute(select(ae_title, func.count()).group_by(ae_title))
        counts = {title: int(count) for title, count in grouped}
        heads = session.scalars(
            select(UpsEventReport).where(UpsEventReport.pk.in_(oldest)).order_by(ae_title)
        )
        return [
            QueueSummary(
                head.ae_title,
                counts.get(head.ae_title, 0),
                _aware(head.created_at).isoformat(timespec="seconds"),
                _aware(head.next_attempt_at).isoformat(timespec="seconds"),
                head.attempts,
                head.last_error,
            )
            for head in heads
        ]


def _queue(
    session: Session, uid: str, ae_titles: Sequence[str], reports: Sequence[Report], now: datetime
) -> None:
    """One row per (report, AE), in order: reports to one AE keep the order they happened in."""
    if not ae_titles:
        return
    for report in reports:
        information = header_json(report.information)
        for ae_title in ae_titles:
            session.add(
                UpsEventReport(
                    ae_title=ae_title,
                    sop_instance_uid=uid,
                    event_type=report.event_type,
                    information=information,
                    created_at=now,
                    next_attempt_at=now,
                    attempts=0,
                    last_error="",
                )
            )
    session.flush()


def _locked(session: Session, uid: str) -> UpsWorkitem:
    """The workitem's row, locked for the change (SELECT ... FOR UPDATE; SQLite serializes
    writers); 0xC307 when there is none."""
    row = session.scalars(
        select(UpsWorkitem).where(UpsWorkitem.sop_instance_uid == uid).with_for_update()
    ).one_or_none()
    if row is None:
        raise NoSuchWorkitem(f"no workitem {uid}")
    return row


def _subscription(row: UpsWorkitem, ae_title: str) -> UpsSubscription:
    for subscription in row.subscriptions:
        if subscription.ae_title == ae_title:
            return subscription
    subscription = UpsSubscription(ae_title=ae_title, deletion_lock=False)
    row.subscriptions.append(subscription)
    return subscription


def _workitem(row: UpsWorkitem) -> Workitem:
    return Workitem(
        row.sop_instance_uid,
        row.state,
        row.transaction_uid,
        row.performer_ae_title,
        Dataset.from_json(row.attributes),
    )


def _fill(row: UpsWorkitem, attributes: Dataset, now: datetime) -> None:
    row.state = index_text(attributes, "ProcedureStepState")[:16]
    row.priority = index_text(attributes, "ScheduledProcedureStepPriority")[:16]
    row.input_readiness_state = index_text(attributes, "InputReadinessState")[:16]
    row.procedure_step_label = index_text(attributes, "ProcedureStepLabel")
    row.worklist_label = index_text(attributes, "WorklistLabel")
    row.patient_id = index_text(attributes, "PatientID")
    row.patient_name = index_text(attributes, "PatientName")
    row.start_datetime = index_text(attributes, "ScheduledProcedureStepStartDateTime")[:32]
    row.updated_at = now
    row.attributes = header_json(attributes)


def _matches(match_keys: dict[str, Any] | None, document: dict[str, Any]) -> bool:
    """Does a workitem match a Filtered Global Subscription's keys (C-FIND matching, CC.2.3.3.1)?"""
    if match_keys is None:
        return True
    keys = parse_identifier(Dataset.from_json(match_keys), MatchOptions())
    record = JsonRecord(document)
    return all(key.matcher.matches(record) for key in keys if key.matcher is not None)


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
