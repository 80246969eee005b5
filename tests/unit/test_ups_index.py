"""UPS workitems in the index: subscription states (PS3.4 Table CC.2.3-2), the event report
queue (in order per AE, a failed AE waits without holding up the others), C-FIND matching on
the stored workitems, and the deletion of final workitems no lock holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.dataset import Dataset

from pacsd.dicom.matching import MatchOptions, parse_identifier
from pacsd.dicom.ups import (
    COMPLETED,
    GLOBAL_SUBSCRIPTION,
    STATE_REPORT,
    Outcome,
    Report,
    Workitem,
    creation_reports,
    prepare_create,
)
from pacsd.errors import DuplicateRejected
from pacsd.index import ups
from pacsd.index.database import IndexDatabase, create_index_engine
from pacsd.index.schema import ensure_schema

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture
def database(database_url: str) -> Iterator[IndexDatabase]:
    database = IndexDatabase(create_index_engine(database_url))
    ensure_schema(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def attributes(label: str = "CAD", patient_id: str = "PID-1") -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "LOW"
    ds.ProcedureStepLabel = label
    ds.WorklistLabel = label
    ds.ScheduledProcedureStepStartDateTime = "20261207090000"
    ds.InputReadinessState = "READY"
    ds.PatientID = patient_id
    return ds


def created(database: IndexDatabase, uid: str, label: str = "CAD") -> list[str]:
    stored, _ = prepare_create(attributes(label), uid, NOW, "PACSD")
    return ups.create_workitem(database, uid, stored, "RIS", creation_reports(stored))


def queued(database: IndexDatabase, ae_title: str) -> list[tuple[str, int]]:
    return [
        (report.sop_instance_uid, report.event_type)
        for report in ups.pending_reports(database, ae_title, 100)
    ]


def test_a_duplicate_workitem_is_0111(database: IndexDatabase) -> None:
    created(database, "1.1")
    with pytest.raises(DuplicateRejected):
        created(database, "1.1")


def test_subscription_states_follow_table_cc_2_3_2(database: IndexDatabase) -> None:
    created(database, "1.1")
    ups.subscribe(database, "1.1", "A", lock=False)
    assert queued(database, "A") == [("1.1", STATE_REPORT)]  # initial report
    # Global with lock: the unsubscribed workitems are subscribed with lock (and reported),
    # the subscribed one keeps its state (w/o lock).
    created(database, "1.2")
    assert ups.subscribe_globally(database, "A", lock=True, match_keys=None) == 1
    assert queued(database, "A") == [("1.1", STATE_REPORT), ("1.2", STATE_REPORT)]
    subscribers = {item.sop_instance_uid: item.subscribers for item in ups.list_workitems(database)}
    assert subscribers == {"1.1": ["A"], "1.2": ["A (lock)"]}
    # A new workitem: subscribed as the Global Subscription says, with its initial report.
    assert created(database, "1.3") == ["A"]
    assert queued(database, "A")[-1] == ("1.3", STATE_REPORT)
    # Suspend: no new workitems; the existing subscriptions stay.
    ups.suspend_global(database, "A")
    assert created(database, "1.4") == []
    assert len(ups.list_workitems(database)[2].subscribers) == 1
    # Unsubscribe globally: every subscription of the AE goes.
    assert ups.unsubscribe_globally(database, "A") == 3
    assert all(item.subscribers == [] for item in ups.list_workitems(database))


def test_a_filtered_global_subscription_takes_the_matching_workitems(
    database: IndexDatabase,
) -> None:
    created(database, "1.1", label="CT reading")
    created(database, "1.2", label="MR reading")
    keys = Dataset()
    keys.WorklistLabel = "CT*"
    assert ups.subscribe_globally(database, "A", lock=False, match_keys=keys) == 1
    assert created(database, "1.3", label="CT again") == ["A"]
    assert created(database, "1.4", label="MR again") == []
    assert queued(database, "A") == [("1.3", STATE_REPORT)]  # w/o lock: no initial reports


def test_reports_wait_in_order_per_ae_and_a_failing_ae_holds_up_no_other(
    database: IndexDatabase,
) -> None:
    ups.queue_reports(database, "1.1", ["A", "B"], [Report(1, Dataset()), Report(3, Dataset())])
    assert sorted(ups.due_ae_titles(database)) == ["A", "B"]
    ups.reschedule(database, "A", 60, "A is down")
    assert ups.due_ae_titles(database) == ["B"]
    ups.queue_reports(database, "1.2", ["A"], [Report(2, Dataset())])
    assert ups.due_ae_titles(database) == ["B"]  # A's oldest report decides
    assert queued(database, "A") == [("1.1", 1), ("1.1", 3), ("1.2", 2)]
    [queue_a, queue_b] = ups.list_queues(database)
    assert (queue_a.ae_title, queue_a.reports, queue_a.attempts) == ("A", 3, 1)
    assert (queue_a.last_error, queue_b.reports) == ("A is down", 2)
    next_due = ups.next_due(database)
    assert next_due is not None
    assert next_due <= datetime.now(UTC)
    ups.remove_reports(database, [r.pk for r in ups.pending_reports(database, "B", 10)])
    assert ups.next_due(database) > datetime.now(UTC) + timedelta(seconds=30)  # type: ignore[operator]
    assert ups.due_now(database) == 3
    assert ups.due_ae_titles(database) == ["A"]


def test_update_queues_the_reports_of_a_change_for_the_subscribers(
    database: IndexDatabase,
) -> None:
    created(database, "1.1")
    ups.subscribe(database, "1.1", "A", lock=False)

    def complete(item: Workitem, subscribers: object) -> Outcome:
        assert subscribers == ["A"]
        done = item.attributes
        done.ProcedureStepState = COMPLETED
        moved = Workitem(item.sop_instance_uid, COMPLETED, "9.9", "P", done)
        return Outcome(moved, reports=[Report(STATE_REPORT, Dataset())])

    ups.update_workitem(database, "1.1", complete)
    assert queued(database, "A") == [("1.1", STATE_REPORT), ("1.1", STATE_REPORT)]
    [item] = ups.list_workitems(database)
    assert (item.state, item.performer) == (COMPLETED, "P")


def test_find_matches_on_the_stored_workitems(database: IndexDatabase) -> None:
    for number in range(5):
        created(database, f"1.{number}", label="CT" if number % 2 else "MR")
    identifier = Dataset()
    identifier.WorklistLabel = "CT"
    identifier.ProcedureStepState = "SCHEDULED"
    keys = parse_identifier(identifier, MatchOptions())
    found = list(ups.find_workitems(database, keys, batch_size=1))
    assert [document["00080018"]["Value"][0] for document in found] == ["1.1", "1.3"]


def test_final_workitems_go_once_no_deletion_lock_holds_them(database: IndexDatabase) -> None:
    for uid in ("1.1", "1.2"):
        created(database, uid)
    ups.subscribe(database, "1.1", "A", lock=True)

    def complete(item: Workitem, _subscribers: object) -> Outcome:
        item.attributes.ProcedureStepState = COMPLETED
        return Outcome(Workitem(item.sop_instance_uid, COMPLETED, "", "", item.attributes))

    for uid in ("1.1", "1.2"):
        ups.update_workitem(database, uid, complete)
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert ups.purge_final(database, datetime.now(UTC) - timedelta(hours=1)) == []  # too recent
    assert ups.purge_final(database, later) == ["1.2"]
    ups.unsubscribe(database, "1.1", "A")
    assert ups.purge_final(database, later) == ["1.1"]
    assert ups.subscriber_ae_titles(database) == set()
    ups.queue_reports(database, GLOBAL_SUBSCRIPTION, ["A"], [Report(4, Dataset())])
    assert queued(database, "A")[-1] == (GLOBAL_SUBSCRIPTION, 4)
