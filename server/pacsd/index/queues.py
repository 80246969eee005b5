"""Cheap questions the HTTP side asks the index: is it answering, how long are its queues.

Each is one statement on a Core connection (no ORM session), run by the caller in an executor
with a timeout (pacsd.http.health, pacsd.http.metrics): never on the event loop.
"""

from __future__ import annotations

from sqlalchemy import func, select, text

from pacsd.index.commitment import PENDING
from pacsd.index.database import IndexDatabase
from pacsd.index.models import CommitmentRequest, UpsEventReport


def answers(database: IndexDatabase) -> None:
    """Run a trivial query; raises what the database raised."""
    with database.reading_connection() as connection:
        connection.execute(text("SELECT 1")).scalar_one()


def queue_depths(database: IndexDatabase) -> tuple[int, int]:
    """(storage commitment requests whose report is pending, UPS event reports pending).

    Both counts use an index (commitment_request.state) or a small table (ups_event_report
    holds only undelivered reports: a delivered one is deleted).
    """
    commitment = select(func.count()).where(CommitmentRequest.state == PENDING)
    ups_events = select(func.count()).select_from(UpsEventReport)
    with database.reading_connection() as connection:
        pending = int(connection.execute(commitment).scalar_one())
        reports = int(connection.execute(ups_events).scalar_one())
    return pending, reports
