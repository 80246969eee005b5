"""Storage Commitment requests in the index, and the check of what they reference.

A request is stored before the N-ACTION is answered, so a restart of pacsd between the N-ACTION
and the N-EVENT-REPORT loses nothing: the worker finds it pending and delivers it afterwards.
The check (`verify`) looks at each referenced instance in the index and reads its file again:
present, of the class the requester named, and with the SHA-256 recorded when it was stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from pacsd.errors import ProcessingFailure
from pacsd.index.cluster import Claim
from pacsd.index.database import IndexDatabase
from pacsd.index.models import CommitmentRequest, Instance

PENDING = "pending"
DELIVERED = "delivered"
GIVEN_UP = "given-up"  # commitment.report_lifetime or max_attempts reached
CANCELLED = "cancelled"  # by `pacsd commitment cancel`
# PS3.4 J.3.3.1.1 (Failure Reason, 0008,1197)
NO_SUCH_OBJECT_INSTANCE = 0x0112
PROCESSING_FAILURE = 0x0110
CLASS_INSTANCE_CONFLICT = 0x0119
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Pending:
    """A request whose report is due."""

    transaction_uid: str
    calling_ae_title: str
    references: list[tuple[str, str]]
    result: dict[str, Any] | None
    attempts: int
    requested_at: datetime
    pk: int = 0


@dataclass(frozen=True)
class Queued:
    """A request as `pacsd commitment list` shows it."""

    id: int
    transaction_uid: str
    calling_ae_title: str
    state: str
    requested_at: str
    next_attempt_at: str
    attempts: int
    instances: int
    last_error: str


def add_request(
    database: IndexDatabase,
    transaction_uid: str,
    calling_ae_title: str,
    references: Sequence[tuple[str, str]],
    claim: Claim | None = None,
) -> None:
    """Persist a new request, due at once; with `claim` (cluster mode), held by this node,
    which may have the requesting association to report on."""
    now = datetime.now(UTC)
    held = {"claimed_by": claim.node, "claimed_until": claim.until()} if claim else {}
    request = CommitmentRequest(
        transaction_uid=transaction_uid,
        calling_ae_title=calling_ae_title,
        state=PENDING,
        requested_at=now,
        next_attempt_at=now,
        attempts=0,
        last_error="",
        references=[list(pair) for pair in references],
        result=None,
        **held,
    )
    try:
        with database.writing() as session:
            session.add(request)
    except IntegrityError:
        raise ProcessingFailure(f"transaction {transaction_uid} was requested before") from None


def due_requests(
    database: IndexDatabase, limit: int = 50, claim: Claim | None = None
) -> list[Pending]:
    """Pending requests whose next attempt is due, oldest first; with `claim` (cluster mode),
    those no other node holds, claimed for this one (SKIP LOCKED: nodes never wait on each
    other's claims)."""
    now = datetime.now(UTC)
    statement = (
        select(CommitmentRequest)
        .where(CommitmentRequest.state == PENDING, CommitmentRequest.next_attempt_at <= now)
        .order_by(CommitmentRequest.next_attempt_at, CommitmentRequest.pk)
        .limit(limit)
    )
    if claim is not None:
        return _claim_due(database, statement, claim)
    with database.reading() as session:
        return [_pending(row) for row in session.scalars(statement)]


def _pending(row: CommitmentRequest) -> Pending:
    return Pending(
        row.transaction_uid,
        row.calling_ae_title,
        [(str(pair[0]), str(pair[1])) for pair in row.references],
        row.result,
        row.attempts,
        _aware(row.requested_at),
        row.pk,
    )


def _claim_due(database: IndexDatabase, statement: Any, claim: Claim) -> list[Pending]:
    mine = statement.where(
        claim.claimable(CommitmentRequest.claimed_by, CommitmentRequest.claimed_until)
    ).with_for_update(skip_locked=True)
    with database.writing() as session:
        rows = list(session.scalars(mine))
        if rows:
            session.execute(
                update(CommitmentRequest)
                .where(CommitmentRequest.pk.in_([row.pk for row in rows]))
                .values(claimed_by=claim.node, claimed_until=claim.until())
            )
        return [_pending(row) for row in rows]


def list_requests(database: IndexDatabase, everything: bool = False) -> list[Queued]:
    """The requests whose report is waiting (with `everything`, also the delivered, given up
    and cancelled ones), oldest first."""
    statement = select(CommitmentRequest).order_by(CommitmentRequest.pk)
    if not everything:
        statement = statement.where(CommitmentRequest.state == PENDING)
    with database.reading() as session:
        return [
            Queued(
                row.pk,
                row.transaction_uid,
                row.calling_ae_title,
                row.state,
                _aware(row.requested_at).isoformat(timespec="seconds"),
                _aware(row.next_attempt_at).isoformat(timespec="seconds")
                if row.state == PENDING
                else "",
                row.attempts,
                len(row.references),
                row.last_error,
            )
            for row in session.scalars(statement)
        ]


def end_requests(
    database: IndexDatabase, ids: Sequence[int | str] | None, state: str, reason: str
) -> list[Pending]:
    """Move pending requests (by ID or Transaction UID; None: all of them) to `state`
    (GIVEN_UP, CANCELLED), noting `reason`; the requests that were pending."""
    statement = select(CommitmentRequest).where(CommitmentRequest.state == PENDING)
    if ids is not None:
        numbers = [item for item in ids if isinstance(item, int)]
        uids = [item for item in ids if isinstance(item, str)]
        statement = statement.where(
            CommitmentRequest.pk.in_(numbers) | CommitmentRequest.transaction_uid.in_(uids)
        )
    with database.writing() as session:
        ended = []
        for row in session.scalars(statement.with_for_update()):
            row.state, row.last_error = state, reason[:256]
            row.claimed_by, row.claimed_until = None, None
            ended.append(_pending(row))
        return ended


def next_due(database: IndexDatabase, claim: Claim | None = None) -> datetime | None:
    """When the earliest pending request is due, if any (with `claim`: of those no other node
    holds)."""
    statement = select(CommitmentRequest.next_attempt_at).where(CommitmentRequest.state == PENDING)
    if claim is not None:
        statement = statement.where(
            claim.claimable(CommitmentRequest.claimed_by, CommitmentRequest.claimed_until)
        )
    with database.reading() as session:
        found = session.scalar(statement.order_by(CommitmentRequest.next_attempt_at).limit(1))
    return _aware(found) if found is not None else None


def due_now(database: IndexDatabase, claim: Claim | None = None) -> int:
    """Make every pending request due at once (start-up); how many there are. With `claim`
    (cluster mode), only those this node held when it stopped: the others are other nodes'."""
    statement = select(CommitmentRequest).where(CommitmentRequest.state == PENDING)
    if claim is not None:
        statement = statement.where(CommitmentRequest.claimed_by == claim.node)
    with database.writing() as session:
        rows = list(session.scalars(statement))
        now = datetime.now(UTC)
        for row in rows:
            row.next_attempt_at = now
        return len(rows)


def save_result(database: IndexDatabase, transaction_uid: str, result: dict[str, Any]) -> None:
    """Keep the outcome of the check, so that every delivery attempt reports the same."""
    with database.writing() as session:
        row = _row(session, transaction_uid)
        row.result = result


def mark_delivered(database: IndexDatabase, transaction_uid: str) -> None:
    """The requester acknowledged the N-EVENT-REPORT."""
    with database.writing() as session:
        row = _row(session, transaction_uid)
        row.state, row.delivered_at, row.last_error = DELIVERED, datetime.now(UTC), ""
        row.attempts += 1
        row.claimed_by, row.claimed_until = None, None


def reschedule(database: IndexDatabase, transaction_uid: str, delay_s: float, error: str) -> None:
    """Count a failed delivery and set the next attempt `delay_s` from now; any node (cluster
    mode) may make it."""
    with database.writing() as session:
        row = _row(session, transaction_uid)
        row.attempts += 1
        row.claimed_by, row.claimed_until = None, None
        row.last_error = error[:256]
        row.next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay_s)


def request_state(database: IndexDatabase, transaction_uid: str) -> tuple[str, int, str] | None:
    """(state, attempts, last error) of a request, None when there is none."""
    with database.reading() as session:
        row = session.scalars(
            select(CommitmentRequest).where(CommitmentRequest.transaction_uid == transaction_uid)
        ).one_or_none()
        return (row.state, row.attempts, row.last_error) if row is not None else None


def _row(session: Any, transaction_uid: str) -> CommitmentRequest:
    statement = select(CommitmentRequest).where(
        CommitmentRequest.transaction_uid == transaction_uid
    )
    row: CommitmentRequest = session.scalars(statement.with_for_update()).one()
    return row


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def verify(
    database: IndexDatabase,
    locate: Callable[[str], BinaryIO],
    references: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """{"success": [[class, instance]...], "failed": [[class, instance, reason]...]};
    `locate` opens a stored file by its relative path (InstanceStore.open)."""
    uids = [instance for _class, instance in references]
    with database.reading() as session:
        rows = {
            row.sop_instance_uid: (row.sop_class_uid, row.file_path, row.file_sha256)
            for row in session.execute(
                select(
                    Instance.sop_instance_uid,
                    Instance.sop_class_uid,
                    Instance.file_path,
                    Instance.file_sha256,
                ).where(Instance.sop_instance_uid.in_(uids))
            )
        }
    success: list[list[str]] = []
    failed: list[list[Any]] = []
    for sop_class, sop_instance in references:
        stored = rows.get(sop_instance)
        if stored is None:
            failed.append([sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE])
        elif stored[0] != sop_class:
            failed.append([sop_class, sop_instance, CLASS_INSTANCE_CONFLICT])
        elif _sha256(locate, stored[1]) != stored[2]:
            failed.append([sop_class, sop_instance, PROCESSING_FAILURE])
        else:
            success.append([sop_class, sop_instance])
    return {"success": success, "failed": failed}


def _sha256(locate: Callable[[str], BinaryIO], relative_path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with locate(relative_path) as stream:
            while chunk := stream.read(READ_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
