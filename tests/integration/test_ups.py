"""Unified Procedure Step SCP against a real pacsd, with pynetdicom as SCU and as subscriber.

The life cycle Push -> subscribe -> Pull (C-FIND) -> IN PROGRESS -> N-SET -> COMPLETED; the
refusals of PS3.4 Annex CC's tables over the wire; event reports on the subscriber's open
association, on a new association after it released, and retried until a subscriber that was
down comes back; cancellation requests; deletion locks; the state across a restart; ISO_IR 192
names intact; `pacsd ups list`.
"""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, base_config, pacsd_command

PUSH = "1.2.840.10008.5.1.4.34.6.1"
WATCH = "1.2.840.10008.5.1.4.34.6.2"
PULL = "1.2.840.10008.5.1.4.34.6.3"
EVENT = "1.2.840.10008.5.1.4.34.6.4"
QUERY = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS, ASSIGNED = 1, 2, 3, 4, 5
SUBSCRIBERS = ("WATCHER", "PERFORMER")
TIMEOUT_S = 30
REPORT_WAIT_S = 20
IDLE_S = 120  # an SCU's association may sit unused this long


@dataclass(frozen=True)
class Received:
    """One N-EVENT-REPORT a subscriber got, and whether it came on its own association."""

    event_type: int
    sop_instance_uid: str
    information: Dataset
    on: str  # "requestor": the subscriber's association; "acceptor": one pacsd opened


@dataclass
class Inbox:
    received: queue.Queue[Received] = field(default_factory=queue.Queue)

    def on_event_report(self, event: Any) -> tuple[int, None]:
        request = event.request
        self.received.put(
            Received(
                int(request.EventTypeID),
                str(request.AffectedSOPInstanceUID),
                event.event_information,
                "requestor" if event.assoc.is_requestor else "acceptor",
            )
        )
        assert request.AffectedSOPClassUID == PUSH  # CC.2.4.3
        return 0x0000, None

    def next(self, timeout: float = REPORT_WAIT_S, skip_status: bool = True) -> Received:
        while True:
            report = self.received.get(timeout=timeout)
            if not (skip_status and report.event_type == SCP_STATUS):
                return report

    def take(self, count: int) -> list[Received]:
        return [self.next() for _ in range(count)]

    def quiet(self, seconds: float = 1.0) -> bool:
        """Nothing (but SCP status reports) arrives within `seconds`."""
        try:
            self.next(timeout=seconds)
        except queue.Empty:
            return True
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Setup:
    root: Path
    database_url: str
    ports: dict[str, int] = field(default_factory=lambda: {ae: _free_port() for ae in SUBSCRIBERS})
    inboxes: dict[str, Inbox] = field(default_factory=dict)

    def inbox(self, ae_title: str) -> Inbox:
        return self.inboxes.setdefault(ae_title, Inbox())

    def server(self, **ups: Any) -> PacsdProcess:
        peers = [{"ae_title": ae, "host": "127.0.0.1", "port": p} for ae, p in self.ports.items()]
        settings = {"retry_initial": 0.2, "retry_max": 0.5, **ups}
        config = base_config(
            self.root,
            self.database_url,
            peers=peers,
            policies=[{"name": "ups", "sop_classes": ["verification", "ups"]}],
            ups=settings,
        )
        return PacsdProcess.from_config(self.root, config)


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> Setup:
    return Setup(tmp_path / "pacsd", database_url)


@pytest.fixture
def server(setup: Setup) -> Iterator[PacsdProcess]:
    started = setup.server().start()
    try:
        yield started
    finally:
        if started.process is not None and started.process.poll() is None:
            started.stop()


@contextmanager
def scu(server: PacsdProcess, setup: Setup, calling: str = "RIS") -> Iterator[Association]:
    """An SCU of every UPS SOP class; it hears reports on its own UPS Event context."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = TIMEOUT_S
    # pynetdicom's network_timeout ends an association idle that long: the RIS's stays open,
    # unused, while the performer works (over 30 s on a loaded CI machine). Finite all the same:
    # with None, pynetdicom's reactor may never pause for a release (a hang seen in CI).
    ae.network_timeout = IDLE_S
    for sop_class in (PUSH, PULL, WATCH, QUERY, EVENT):
        ae.add_requested_context(sop_class)
    handlers = [(evt.EVT_N_EVENT_REPORT, setup.inbox(calling).on_event_report)]
    assoc = ae.associate(server.host, server.port, ae_title="PACSD", evt_handlers=handlers)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


@contextmanager
def listening(setup: Setup, ae_title: str) -> Iterator[None]:
    """The subscriber's own UPS Event SCP, where pacsd reports on a new association."""
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(EVENT, scu_role=False, scp_role=True)
    handlers = [(evt.EVT_N_EVENT_REPORT, setup.inbox(ae_title).on_event_report)]
    scp = ae.start_server(("127.0.0.1", setup.ports[ae_title]), block=False, evt_handlers=handlers)
    try:
        yield
    finally:
        scp.shutdown()


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99PACSD", meaning
    return item


def workitem(**attributes: Any) -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "Lung nodule CAD"
    ds.WorklistLabel = "CAD"
    ds.ScheduledProcedureStepStartDateTime = "20261207090000"
    ds.InputReadinessState = "READY"
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-1"
    ds.ScheduledWorkitemCodeSequence = Sequence([code("CAD", "Computer aided detection")])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def create(assoc: Association, attributes: Dataset | None = None) -> str:
    uid = generate_uid(TEST_UID_ROOT)
    status, _ = assoc.send_n_create(attributes or workitem(), PUSH, uid)
    assert status.Status == 0x0000, status
    return uid


def action(assoc: Association, action_type: int, uid: str, info: Dataset) -> Dataset:
    status, _reply = assoc.send_n_action(info, action_type, PUSH, uid)
    return status


def subscribe(assoc: Association, uid: str, receiving: str, lock: bool = False, **keys: Any) -> int:
    info = Dataset()
    info.ReceivingAE, info.DeletionLock = receiving, "TRUE" if lock else "FALSE"
    for keyword, value in keys.items():
        setattr(info, keyword, value)
    return int(action(assoc, 3, uid, info).Status)


def unsubscribe(assoc: Association, uid: str, receiving: str, action_type: int = 4) -> int:
    info = Dataset()
    info.ReceivingAE = receiving
    return int(action(assoc, action_type, uid, info).Status)


def change(assoc: Association, uid: str, state: str, transaction: str | None) -> Dataset:
    info = Dataset()
    info.ProcedureStepState = state
    if transaction is not None:
        info.TransactionUID = transaction
    return action(assoc, 1, uid, info)


def n_set(assoc: Association, uid: str, modification: Dataset) -> Dataset:
    status, _ = assoc.send_n_set(modification, PUSH, uid)
    return status


def n_get(assoc: Association, uid: str, tags: list[int] | None = None) -> tuple[int, Dataset]:
    status, attributes = assoc.send_n_get(tags or [], PUSH, uid)
    return int(status.Status), attributes


def find(assoc: Association, identifier: Dataset, model: str = PULL) -> list[Dataset]:
    matches = []
    for status, found in assoc.send_c_find(identifier, model):
        assert status.Status in (0x0000, 0xFF00, 0xFF01), status
        if status.Status in (0xFF00, 0xFF01):
            matches.append(found)
    return matches


def progress(transaction: str, percent: str, description: str = "") -> Dataset:
    item = Dataset()
    item.ProcedureStepProgress = percent
    if description:
        item.ProcedureStepProgressDescription = description
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.ProcedureStepProgressInformationSequence = Sequence([item])
    return ds


def performed(transaction: str) -> Dataset:
    """The N-SET meeting COMPLETED's final state requirements (Table CC.2.5-3, code P)."""
    item = Dataset()
    item.PerformedStationNameCodeSequence = Sequence([code("WS1", "Workstation 1")])
    item.PerformedProcedureStepStartDateTime = "20261207100000"
    item.PerformedProcedureStepEndDateTime = "20261207101500"
    item.PerformedWorkitemCodeSequence = Sequence([code("CAD", "Computer aided detection")])
    item.OutputInformationSequence = Sequence()
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.UnifiedProcedureStepPerformedProcedureSequence = Sequence([item])
    return ds


def claimed(assoc: Association, uid: str) -> str:
    transaction = generate_uid(TEST_UID_ROOT)
    assert change(assoc, uid, "IN PROGRESS", transaction).Status == 0x0000
    return transaction


def ups_list(server: PacsdProcess) -> dict[str, Any]:
    listed = pacsd_command("ups", "list", "--json", "--config", str(server.config_path))
    assert listed.returncode == 0, listed.stderr
    document: dict[str, Any] = json.loads(listed.stdout)
    return document


def states(reports: list[Received]) -> list[tuple[int, str]]:
    return [(r.event_type, str(r.information.get("ProcedureStepState", ""))) for r in reports]


def test_life_cycle_push_subscribe_pull_claim_progress_and_complete(
    server: PacsdProcess, setup: Setup
) -> None:
    """The SCU pushes a workitem, watchers subscribe (globally, and to the one workitem), a
    performer finds it with C-FIND, claims it, reports progress and completes it; each step
    reaches the subscribers on their open associations, in order."""
    with scu(server, setup, "RIS") as ris, scu(server, setup, "WATCHER") as watcher:
        uid = create(ris)
        status, stored = n_get(ris, uid)
        assert (status, stored.ProcedureStepState, stored.SOPClassUID) == (0, "SCHEDULED", PUSH)
        assert "TransactionUID" not in stored
        assert subscribe(watcher, GLOBAL, "WATCHER") == 0x0000  # w/o lock: no initial report
        with scu(server, setup, "PERFORMER") as performer:
            assert subscribe(performer, uid, "PERFORMER") == 0x0000
            initial = setup.inbox("PERFORMER").next()
            assert (initial.event_type, initial.sop_instance_uid, initial.on) == (
                STATE_REPORT,
                uid,
                "requestor",
            )
            assert initial.information.ProcedureStepState == "SCHEDULED"
            assert initial.information.InputReadinessState == "READY"

            query = Dataset()
            query.ProcedureStepState, query.WorklistLabel = "SCHEDULED", "CAD"
            query.ScheduledProcedureStepStartDateTime = "20261207-20261208"
            query.SOPInstanceUID = query.ProcedureStepLabel = query.PatientName = ""
            [found] = find(performer, query)
            assert (found.SOPInstanceUID, found.ProcedureStepLabel) == (uid, "Lung nodule CAD")

            transaction = claimed(performer, uid)
            assert n_set(performer, uid, progress(transaction, "40", "lobes")).Status == 0
            incomplete = change(performer, uid, "COMPLETED", transaction)
            assert incomplete.Status == 0xC304, incomplete
            assert n_set(performer, uid, performed(transaction)).Status == 0x0000
            assert change(performer, uid, "COMPLETED", transaction).Status == 0x0000
            expected = [
                (STATE_REPORT, "IN PROGRESS"),
                (PROGRESS_REPORT, ""),
                (STATE_REPORT, "COMPLETED"),
            ]
            assert states(setup.inbox("PERFORMER").take(3)) == expected
        watched = setup.inbox("WATCHER").take(3)
        assert states(watched) == expected
        assert {report.on for report in watched} == {"requestor"}
        progress_info = watched[1].information.ProcedureStepProgressInformationSequence[0]
        assert progress_info.ProcedureStepProgressDescription == "lobes"
        status, done = n_get(ris, uid, [0x00741000, 0x00741216, 0x00081195])
        assert status == 0x0001  # Transaction UID asked for: not returned (CC.2.7.3)
        assert done.ProcedureStepState == "COMPLETED"
        assert "TransactionUID" not in done
        assert len(done.UnifiedProcedureStepPerformedProcedureSequence) == 1


def test_global_subscription_tells_of_new_workitems_and_a_filtered_one_of_matching_ones(
    server: PacsdProcess, setup: Setup
) -> None:
    """Global with lock: an initial report for every existing workitem, then a SCHEDULED
    report and UPS Assigned for each new one; filtered: only the workitems its keys match."""
    with scu(server, setup, "RIS") as ris:
        before = create(ris)
        with scu(server, setup, "WATCHER") as watcher, scu(server, setup, "PERFORMER") as other:
            assert subscribe(watcher, GLOBAL, "WATCHER", lock=True) == 0x0000
            assert setup.inbox("WATCHER").next().sop_instance_uid == before
            keys = {"WorklistLabel": "CT*"}
            assert subscribe(other, FILTERED, "PERFORMER", lock=False, **keys) == 0x0000
            performer = Dataset()
            performer.HumanPerformerCodeSequence = Sequence([code("JD", "Dr Doe")])
            performer.HumanPerformerName = "Doe^John"
            performer.HumanPerformerOrganization = "Radiology"
            assigned = workitem(WorklistLabel="CT reading")
            assigned.ScheduledHumanPerformersSequence = Sequence([performer])
            new = create(ris, assigned)
            other_label = create(ris, workitem(WorklistLabel="MR reading"))
            reports = setup.inbox("WATCHER").take(3)
            assert [(r.event_type, r.sop_instance_uid) for r in reports] == [
                (STATE_REPORT, new),
                (ASSIGNED, new),
                (STATE_REPORT, other_label),
            ]
            assert reports[1].information.HumanPerformerOrganization == "Radiology"
            filtered = setup.inbox("PERFORMER").take(2)
            assert {r.sop_instance_uid for r in filtered} == {new}
            assert setup.inbox("PERFORMER").quiet()
    listed = {item["sop_instance_uid"]: item for item in ups_list(server)["workitems"]}
    assert listed[new]["subscribers"] == ["PERFORMER", "WATCHER (lock)"]
    assert listed[other_label]["subscribers"] == ["WATCHER (lock)"]


def test_reports_go_to_the_peer_address_once_the_subscriber_released(
    server: PacsdProcess, setup: Setup
) -> None:
    """CC.2.4: the subscriber left; its reports come on an association pacsd opens to its
    `peers` address, pacsd proposing the SCP role for UPS Event (PS3.7 D.3.3.4)."""
    with listening(setup, "WATCHER"):
        with scu(server, setup, "RIS") as ris:
            uid = create(ris)
            with scu(server, setup, "WATCHER") as watcher:
                assert subscribe(watcher, uid, "WATCHER") == 0x0000
                assert setup.inbox("WATCHER").next().on == "requestor"
                # The handler saw the report before its N-EVENT-REPORT-RSP left: released
                # sooner, pacsd would rightly count it undelivered and send it again.
                server.wait_for("UPS event reports delivered")
            transaction = claimed(ris, uid)
        report = setup.inbox("WATCHER").next()
        assert (report.event_type, report.on) == (STATE_REPORT, "acceptor")
        assert report.information.ProcedureStepState == "IN PROGRESS"
    assert transaction


def test_a_subscriber_that_is_down_gets_its_reports_in_order_when_it_is_back(
    server: PacsdProcess, setup: Setup
) -> None:
    """Undelivered reports stay queued (`pacsd ups list` shows them), are retried with
    back-off, and arrive in the order they happened once the subscriber listens again."""
    with scu(server, setup, "RIS") as ris:
        uid = create(ris)
        assert subscribe(ris, uid, "WATCHER") == 0x0000
        server.wait_for("UPS event report not delivered; will retry")
        transaction = claimed(ris, uid)
        assert n_set(ris, uid, progress(transaction, "10")).Status == 0x0000
    [pending] = ups_list(server)["pending_reports"]
    assert (pending["ae_title"], pending["reports"]) == ("WATCHER", 3)
    assert pending["attempts"] >= 1
    assert "WATCHER" in pending["last_error"]
    with listening(setup, "WATCHER"):
        reports = setup.inbox("WATCHER").take(3)
    assert states(reports) == [
        (STATE_REPORT, "SCHEDULED"),
        (STATE_REPORT, "IN PROGRESS"),
        (PROGRESS_REPORT, ""),
    ]
    assert {report.on for report in reports} == {"acceptor"}
    deadline = time.monotonic() + 10
    while ups_list(server)["pending_reports"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ups_list(server)["pending_reports"] == []


def test_request_cancel_in_each_state(server: PacsdProcess, setup: Setup) -> None:
    """CC.2.2: SCHEDULED is canceled by pacsd (IN PROGRESS, then CANCELED, reported); IN
    PROGRESS is reported to the subscribers (0xC312 when nobody could tell the performer);
    COMPLETED is 0xC311; CANCELED 0xB304."""
    reason = Dataset()
    reason.ReasonForCancellation = "Ordered twice"
    reason.ContactDisplayName = "Front desk"
    reason.ContactURI = "tel:+41000000"
    with scu(server, setup, "RIS") as ris, scu(server, setup, "WATCHER") as watcher:
        scheduled = create(ris)
        assert subscribe(watcher, scheduled, "WATCHER") == 0x0000
        setup.inbox("WATCHER").next()
        assert action(ris, 2, scheduled, reason).Status == 0x0000
        reports = setup.inbox("WATCHER").take(3)
        assert states(reports) == [
            (CANCEL_REQUESTED, ""),
            (STATE_REPORT, "IN PROGRESS"),
            (STATE_REPORT, "CANCELED"),
        ]
        assert reports[0].information.RequestingAE == "RIS"
        assert reports[0].information.ContactURI == "tel:+41000000"
        assert reports[2].information.ReasonForCancellation == "Ordered twice"
        assert action(ris, 2, scheduled, reason).Status == 0xB304

        running = create(ris)
        transaction = claimed(ris, running)
        assert action(ris, 2, running, reason).Status == 0xC312  # nobody subscribed
        assert subscribe(watcher, running, "WATCHER") == 0x0000
        setup.inbox("WATCHER").next()
        assert action(ris, 2, running, reason).Status == 0x0000
        told = setup.inbox("WATCHER").next()
        assert (told.event_type, told.information.ReasonForCancellation) == (2, "Ordered twice")
        assert n_get(ris, running)[1].ProcedureStepState == "IN PROGRESS"  # the performer decides

        assert n_set(ris, running, performed(transaction)).Status == 0x0000
        assert change(ris, running, "COMPLETED", transaction).Status == 0x0000
        assert action(ris, 2, running, reason).Status == 0xC311
        unknown = generate_uid(TEST_UID_ROOT)
        assert action(ris, 2, unknown, reason).Status == 0xC307


def test_change_state_refusals_of_table_cc_2_1_2(server: PacsdProcess, setup: Setup) -> None:
    """Over the wire: C307, C303, C310, C301, C302, C304, C300, B306, B304."""
    with scu(server, setup, "RIS") as ris:
        uid = create(ris)
        stranger = generate_uid(TEST_UID_ROOT)
        assert change(ris, generate_uid(TEST_UID_ROOT), "IN PROGRESS", stranger).Status == 0xC307
        assert change(ris, uid, "SCHEDULED", stranger).Status == 0xC303
        assert change(ris, uid, "COMPLETED", stranger).Status == 0xC310
        assert change(ris, uid, "IN PROGRESS", None).Status == 0xC301
        transaction = claimed(ris, uid)
        assert change(ris, uid, "IN PROGRESS", transaction).Status == 0xC302
        assert change(ris, uid, "IN PROGRESS", stranger).Status == 0xC301
        assert change(ris, uid, "COMPLETED", stranger).Status == 0xC301
        refused = change(ris, uid, "CANCELED", transaction)
        assert refused.Status == 0xC304
        assert "ProcedureStepDiscontinuation" in refused.ErrorComment
        assert n_set(ris, uid, performed(transaction)).Status == 0x0000
        assert change(ris, uid, "COMPLETED", transaction).Status == 0x0000
        assert change(ris, uid, "COMPLETED", transaction).Status == 0xB306
        assert change(ris, uid, "CANCELED", transaction).Status == 0xC300

        canceled = create(ris)
        mine = claimed(ris, canceled)
        reason = Dataset()
        reason.ProcedureStepDiscontinuationReasonCodeSequence = Sequence(
            [code("110513", "Discontinued for unspecified reason")]
        )
        modification = Dataset()
        modification.TransactionUID = mine
        modification.ProcedureStepProgressInformationSequence = Sequence([reason])
        assert n_set(ris, canceled, modification).Status == 0x0000
        assert change(ris, canceled, "CANCELED", mine).Status == 0x0000
        assert change(ris, canceled, "CANCELED", mine).Status == 0xB304
        assert change(ris, canceled, "IN PROGRESS", mine).Status == 0xC300


def test_n_create_n_set_and_n_get_refusals(server: PacsdProcess, setup: Setup) -> None:
    """Table CC.2.5-3 on N-CREATE (0x0120, 0x0121, 0x0106, 0xC309, 0x0111, 0xB300), CC.2.6.3
    on N-SET (0xC310, 0xC301, 0x0105, 0xC300, 0xC307), N-GET of no workitem 0xC307."""
    with scu(server, setup, "RIS") as ris:
        attributes = workitem()
        del attributes.ProcedureStepLabel
        status, _ = ris.send_n_create(attributes, PUSH, generate_uid(TEST_UID_ROOT))
        assert status.Status == 0x0120
        assert "ProcedureStepLabel" in status.ErrorComment
        status, _ = ris.send_n_create(workitem(InputReadinessState=""), PUSH, generate_uid())
        assert status.Status == 0x0121
        status, _ = ris.send_n_create(workitem(InputReadinessState="SOON"), PUSH, generate_uid())
        assert status.Status == 0x0106
        status, _ = ris.send_n_create(workitem(ProcedureStepState="IN PROGRESS"), PUSH, "1.2.3")
        assert status.Status == 0xC309
        uid = create(ris)
        status, _ = ris.send_n_create(workitem(), PUSH, uid)
        assert status.Status == 0x0111
        coerced = workitem(ScheduledProcedureStepModificationDateTime="20200101")
        status, _ = ris.send_n_create(coerced, PUSH, generate_uid(TEST_UID_ROOT))
        assert status.Status == 0xB300

        assert n_set(ris, uid, progress(generate_uid(), "5")).Status == 0xC310
        rename = Dataset()
        rename.PatientName = "Roe^Richard"
        refused = n_set(ris, uid, rename)
        assert refused.Status == 0x0105
        assert refused.AttributeIdentifierList == 0x00100010
        transaction = claimed(ris, uid)
        assert n_set(ris, uid, progress(generate_uid(), "5")).Status == 0xC301
        assert n_set(ris, uid, performed(transaction)).Status == 0x0000
        assert change(ris, uid, "COMPLETED", transaction).Status == 0x0000
        assert n_set(ris, uid, progress(transaction, "100")).Status == 0xC300
        unknown = generate_uid(TEST_UID_ROOT)
        assert n_set(ris, unknown, progress(transaction, "1")).Status == 0xC307
        assert n_get(ris, unknown)[0] == 0xC307


def test_subscription_refusals_of_table_cc_2_3_3(server: PacsdProcess, setup: Setup) -> None:
    """0xC308 (Receiving AE not in peers), 0xC307 (no such workitem), 0xC314 (suspend a
    workitem's subscription), 0x0115 (Deletion Lock neither TRUE nor FALSE), 0x0123."""
    with scu(server, setup, "RIS") as ris:
        uid = create(ris)
        assert subscribe(ris, uid, "NOBODY") == 0xC308
        assert subscribe(ris, generate_uid(TEST_UID_ROOT), "WATCHER") == 0xC307
        assert unsubscribe(ris, uid, "WATCHER", action_type=5) == 0xC314
        info = Dataset()
        info.ReceivingAE, info.DeletionLock = "WATCHER", "MAYBE"
        assert action(ris, 3, uid, info).Status == 0x0115
        assert action(ris, 7, uid, info).Status == 0x0123
        assert subscribe(ris, FILTERED, "WATCHER") == 0x0115  # no Matching Keys


def test_deletion_lock_keeps_a_completed_workitem_until_it_is_released(setup: Setup) -> None:
    """CC.2.1.3: a final workitem stays while a deletion lock holds it (`ups.keep_final: 0`);
    unsubscribing releases it, and it is deleted. Without a lock it goes at once."""
    server = setup.server(keep_final=0).start()
    try:
        with listening(setup, "WATCHER"), scu(server, setup, "RIS") as ris:
            locked, free = create(ris), create(ris)
            assert subscribe(ris, locked, "WATCHER", lock=True) == 0x0000
            for uid in (locked, free):
                transaction = claimed(ris, uid)
                assert n_set(ris, uid, performed(transaction)).Status == 0x0000
                assert change(ris, uid, "COMPLETED", transaction).Status == 0x0000
            _wait_until_absent(ris, free)
            assert n_get(ris, locked)[0] == 0x0000
            assert unsubscribe(ris, locked, "WATCHER") == 0x0000
            _wait_until_absent(ris, locked)
    finally:
        server.stop()


def _wait_until_absent(assoc: Association, uid: str) -> None:
    deadline = time.monotonic() + 15
    while n_get(assoc, uid)[0] != 0xC307:
        assert time.monotonic() < deadline, f"{uid} was not deleted"
        time.sleep(0.2)


def test_deletion_locks_refused_by_configuration_answer_b301(setup: Setup) -> None:
    """`ups.deletion_locks: false`: subscribed all the same, without the lock (CC.2.3.3)."""
    server = setup.server(deletion_locks=False).start()
    try:
        with scu(server, setup, "RIS") as ris:
            uid = create(ris)
            assert subscribe(ris, uid, "WATCHER", lock=True) == 0xB301
            assert subscribe(ris, GLOBAL, "WATCHER", lock=True) == 0xB301
        [item] = ups_list(server)["workitems"]
        assert item["subscribers"] == ["WATCHER"]
    finally:
        server.stop()


def test_workitems_subscriptions_and_reports_survive_a_restart(setup: Setup) -> None:
    """The state, the Transaction UID and the queue are in the database: after a restart the
    performer completes its workitem, and the subscriber hears the SCP Status Change
    (RESTARTED, WARM START) and the reports queued before the restart."""
    server = setup.server().start()
    try:
        with scu(server, setup, "RIS") as ris:
            uid = create(ris)
            assert subscribe(ris, uid, "WATCHER") == 0x0000
            transaction = claimed(ris, uid)
        assert server.stop() == 0
        server = setup.server().start()  # the same configuration, database and storage
        with listening(setup, "WATCHER"):
            inbox = setup.inbox("WATCHER")
            before = [inbox.next(skip_status=False) for _ in range(3)]
            assert [r.event_type for r in before] == [STATE_REPORT, STATE_REPORT, SCP_STATUS]
            status = before[2].information
            assert (status.SCPStatus, status.SubscriptionListStatus) == ("RESTARTED", "WARM START")
            assert status.UnifiedProcedureStepListStatus == "WARM START"
            with scu(server, setup, "RIS") as ris:
                assert n_get(ris, uid)[1].ProcedureStepState == "IN PROGRESS"
                assert n_set(ris, uid, performed(transaction)).Status == 0x0000
                assert change(ris, uid, "COMPLETED", transaction).Status == 0x0000
            assert inbox.next().information.ProcedureStepState == "COMPLETED"
    finally:
        server.stop()


def test_non_ascii_names_stay_intact_through_create_set_get_find_and_reports(
    server: PacsdProcess, setup: Setup
) -> None:
    """ISO_IR 192 text (a person name, labels, a cancellation reason) read back unchanged by
    N-GET, C-FIND and in the event reports, across an N-SET (the MPPS lesson: no decode of
    what comes back from the index)."""
    name = "Müller^Jürgen=ミュラー^ユルゲン"
    with scu(server, setup, "RIS") as ris, scu(server, setup, "WATCHER") as watcher:
        attributes = workitem(SpecificCharacterSet="ISO_IR 192", PatientName=name)
        attributes.ProcedureStepLabel = "Größenmessung"
        uid = create(ris, attributes)
        assert subscribe(watcher, uid, "WATCHER") == 0x0000
        setup.inbox("WATCHER").next()
        modification = Dataset()
        modification.SpecificCharacterSet = "ISO_IR 192"
        modification.CommentsOnTheScheduledProcedureStep = "Prüfen, ob Knötchen wächst"
        assert n_set(ris, uid, modification).Status == 0x0000
        status, stored = n_get(ris, uid)
        assert status == 0x0000
        assert (str(stored.PatientName), stored.ProcedureStepLabel) == (name, "Größenmessung")
        assert stored.CommentsOnTheScheduledProcedureStep == "Prüfen, ob Knötchen wächst"
        query = Dataset()
        query.SpecificCharacterSet = "ISO_IR 192"
        query.PatientName = "Müller*"
        query.ProcedureStepLabel = ""
        [found] = find(ris, query, QUERY)
        assert (str(found.PatientName), found.ProcedureStepLabel) == (name, "Größenmessung")
        cancel = Dataset()
        cancel.SpecificCharacterSet = "ISO_IR 192"
        cancel.ReasonForCancellation = "Patientin wünscht Verschiebung"
        assert action(ris, 2, uid, cancel).Status == 0x0000
        reports = setup.inbox("WATCHER").take(3)
        assert reports[0].information.ReasonForCancellation == "Patientin wünscht Verschiebung"
        assert reports[2].information.ReasonForCancellation == "Patientin wünscht Verschiebung"
    [item] = ups_list(server)["workitems"]
    assert item["patient_name"] == name


def test_c_find_matching_on_pull_watch_and_query(server: PacsdProcess, setup: Setup) -> None:
    """C.2.2.2 matching on the workitems: single values, wild cards, a DT range, a sequence;
    Transaction UID is not a matching key (0xFF01, returned empty)."""
    with scu(server, setup, "RIS") as ris:
        morning = create(ris, workitem(ScheduledProcedureStepStartDateTime="20261207080000"))
        evening = create(ris, workitem(ScheduledProcedureStepStartDateTime="20261207200000"))
        urgent = create(ris, workitem(ScheduledProcedureStepPriority="HIGH", PatientID="PID-2"))
        claimed(ris, urgent)
        query = Dataset()
        query.ScheduledProcedureStepStartDateTime = "20261207000000-20261207120000"
        query.SOPInstanceUID = ""
        for model in (PULL, WATCH, QUERY):
            assert {str(m.SOPInstanceUID) for m in find(ris, query, model)} == {morning, urgent}
        by_state = Dataset()
        by_state.ProcedureStepState, by_state.PatientID = "IN PROGRESS", "PID-*"
        assert [str(m.PatientID) for m in find(ris, by_state)] == ["PID-2"]
        item = Dataset()
        item.CodeValue = "CAD"
        by_code = Dataset()
        by_code.ScheduledWorkitemCodeSequence = Sequence([item])
        by_code.SOPInstanceUID = ""
        assert len(find(ris, by_code)) == 3
        secret = Dataset()
        secret.TransactionUID = ""
        secret.SOPInstanceUID = evening
        statuses = [int(status.Status) for status, _ in ris.send_c_find(secret, PULL)]
        assert statuses == [0xFF01, 0x0000]


def test_messages_naming_ups_push_on_a_pull_or_watch_context(
    server: PacsdProcess, setup: Setup
) -> None:
    """A conformant SCU negotiates only UPS Pull and Watch and names UPS Push in its requests."""
    ae = AE(ae_title="PERFORMER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class in (PUSH, PULL, WATCH):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(server.host, server.port, ae_title="PACSD")
    try:
        uid = create(assoc)
        info = Dataset()
        info.ProcedureStepState, info.TransactionUID = "IN PROGRESS", generate_uid()
        status, _ = assoc.send_n_action(info, 1, PUSH, uid, meta_uid=PULL)
        assert status.Status == 0x0000
    finally:
        assoc.release()
