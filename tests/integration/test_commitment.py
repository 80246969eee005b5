"""Storage Commitment Push Model against a real pacsd, with pynetdicom as the modality.

Stored, missing and corrupted (file changed on disk) instances; the report on the requesting
association and on a new one to an SCP started here; a requester unreachable, then back; pacsd
restarted between the N-ACTION and the report; refusals.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from sqlalchemy import create_engine, text

from tests import datagen
from tests.datagen import TEST_UID_ROOT
from tests.harness import PacsdProcess, audit_records, base_config, pacsd_command
from tests.scu import store_files
from tests.tls_certs import SERVER_NAME, make_pki

PUSH = "1.2.840.10008.1.20.1"
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
TIMEOUT_S = 30
REPORT_WAIT_S = 20
REQUESTER = "MODALITY"


@dataclass
class Reports:
    """N-EVENT-REPORTs received: (event type, event information, association it came on)."""

    received: queue.Queue[tuple[int, Dataset, str]] = field(default_factory=queue.Queue)

    def on_event_report(self, event: Any) -> tuple[int, None]:
        info = event.event_information
        kind = "requestor" if event.assoc.is_requestor else "acceptor"
        self.received.put((int(event.request.EventTypeID), info, kind))
        return 0x0000, None

    def next(self, timeout: float = REPORT_WAIT_S) -> tuple[int, Dataset, str]:
        return self.received.get(timeout=timeout)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Setup:
    root: Path
    database_url: str
    scp_port: int
    reports: Reports = field(default_factory=Reports)

    def config(self, **commitment: Any) -> dict[str, Any]:
        peers = [{"ae_title": REQUESTER, "host": "127.0.0.1", "port": self.scp_port}]
        policies = [
            {
                "name": "no-commit",
                "match": {"calling_ae": "NOCOMMIT"},
                "sop_classes": ["verification", "storage", "storage-commitment"],
                "operations": ["echo", "store"],
            },
            {"name": "all", "sop_classes": ["verification", "storage", "storage-commitment"]},
        ]
        settings = {"retry_initial": 0.3, "retry_max": 1.0, **commitment}
        return base_config(
            self.root, self.database_url, peers=peers, policies=policies, commitment=settings
        )

    def server(self, **commitment: Any) -> PacsdProcess:
        return PacsdProcess.from_config(self.root, self.config(**commitment))


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> Setup:
    return Setup(tmp_path / "pacsd", database_url, _free_port())


@pytest.fixture
def server(setup: Setup) -> Iterator[PacsdProcess]:
    server = setup.server().start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@contextmanager
def requester_scp(setup: Setup, tls: ssl.SSLContext | None = None) -> Iterator[None]:
    """The modality's own SCP, where pacsd sends reports on a new association."""
    ae = AE(ae_title=REQUESTER)
    ae.add_supported_context(PUSH, scu_role=False, scp_role=True)
    handlers = [(evt.EVT_N_EVENT_REPORT, setup.reports.on_event_report)]
    scp = ae.start_server(
        ("127.0.0.1", setup.scp_port), block=False, evt_handlers=handlers, ssl_context=tls
    )
    try:
        yield
    finally:
        scp.shutdown()


@contextmanager
def modality(server: PacsdProcess, setup: Setup, calling: str = REQUESTER) -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(PUSH)
    handlers = [(evt.EVT_N_EVENT_REPORT, setup.reports.on_event_report)]
    assoc = ae.associate(server.host, server.port, ae_title="PACSD", evt_handlers=handlers)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def stored(server: PacsdProcess, folder: Path, count: int) -> list[tuple[str, str]]:
    """Store `count` CT instances; their (class, instance) UIDs."""
    paths = list(datagen.ct_series(folder, count, size=8))
    assert [status for status, _ in store_files(server.host, server.port, paths)] == [0] * count
    return [(CT, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)) for path in paths]


def action(references: list[tuple[str, str]], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction or generate_uid(TEST_UID_ROOT)
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def request(assoc: Association, info: Dataset, action_type: int = 1) -> int:
    status, _reply = assoc.send_n_action(info, action_type, PUSH, WELL_KNOWN)
    return int(status.Status)


def uids(items: Any) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in items or []}


def missing_uid() -> tuple[str, str]:
    return CT, generate_uid(TEST_UID_ROOT)


def test_report_on_the_same_association_all_committed(
    server: PacsdProcess, setup: Setup, tmp_path: Path
) -> None:
    references = stored(server, tmp_path / "ct", 3)
    info = action(references)
    with modality(server, setup) as assoc:
        assert request(assoc, info) == 0x0000
        event_type, report, came_on = setup.reports.next()
    assert (event_type, came_on) == (1, "requestor")  # on the association the modality opened
    assert report.TransactionUID == info.TransactionUID
    assert uids(report.ReferencedSOPSequence) == {uid for _class, uid in references}
    assert "FailedSOPSequence" not in report


def test_missing_and_corrupted_instances_are_reported_failed(
    server: PacsdProcess, setup: Setup, tmp_path: Path
) -> None:
    references = stored(server, tmp_path / "ct", 3)
    corrupted = references[0][1]
    _change_stored_file(setup.database_url, setup.root / "storage", corrupted)
    missing = missing_uid()
    with modality(server, setup) as assoc:
        assert request(assoc, action([*references, missing])) == 0x0000
        event_type, report, _ = setup.reports.next()
    assert event_type == 2
    assert uids(report.ReferencedSOPSequence) == {uid for _, uid in references[1:]}
    reasons = {str(i.ReferencedSOPInstanceUID): i.FailureReason for i in report.FailedSOPSequence}
    assert reasons == {corrupted: 0x0110, missing[1]: 0x0112}


def _change_stored_file(database_url: str, storage_root: Path, sop_instance_uid: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        relative = connection.execute(
            text("SELECT file_path FROM instance WHERE sop_instance_uid = :uid"),
            {"uid": sop_instance_uid},
        ).scalar_one()
    engine.dispose()
    path = storage_root / relative
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte flipped: the checksum no longer matches
    path.write_bytes(bytes(data))


def test_report_on_a_new_association_after_the_requester_released(
    server: PacsdProcess, setup: Setup, tmp_path: Path
) -> None:
    references = stored(server, tmp_path / "ct", 2)
    with requester_scp(setup):
        with modality(server, setup) as assoc:
            assert request(assoc, action(references)) == 0x0000
            assoc.release()  # before pacsd could report on it
        event_type, report, came_on = setup.reports.next()
    assert (event_type, came_on) == (1, "acceptor")  # pacsd associated with the modality's SCP
    assert uids(report.ReferencedSOPSequence) == {uid for _, uid in references}


def test_report_over_tls_to_a_requester_marked_tls(setup: Setup, tmp_path: Path) -> None:
    """A peer with `tls: true` gets its report over DICOM TLS: pacsd checks the modality's
    certificate against network.tls.ca_file and presents its own, which the modality's SCP
    requires."""
    pki = make_pki(tmp_path / "pki")
    config = setup.config()
    config["peers"][0].update({"tls": True, "tls_server_name": SERVER_NAME})
    config["network"] = {**config["network"], "tls": pki.listener()}
    modality_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    modality_tls.load_cert_chain(str(pki.server.certificate), str(pki.server.key))
    modality_tls.verify_mode = ssl.CERT_REQUIRED
    modality_tls.load_verify_locations(str(pki.ca_file))
    server = PacsdProcess.from_config(setup.root, config).start()
    try:
        references = stored(server, tmp_path / "ct", 2)
        with requester_scp(setup, tls=modality_tls):
            with modality(server, setup) as assoc:
                assert request(assoc, action(references)) == 0x0000
                assoc.release()  # the report goes on a new association, over TLS
            event_type, report, came_on = setup.reports.next()
        assert (event_type, came_on) == (1, "acceptor")
        assert uids(report.ReferencedSOPSequence) == {uid for _, uid in references}
    finally:
        server.stop()


def test_unreachable_requester_gets_the_report_when_it_is_back(
    setup: Setup, tmp_path: Path
) -> None:
    server = setup.server(report_on_same_association=False).start()
    try:
        references = stored(server, tmp_path / "ct", 1)
        with modality(server, setup) as assoc:
            assert request(assoc, action(references)) == 0x0000
        server.wait_for("commitment report not delivered; will retry", count=2)
        with pytest.raises(queue.Empty):
            setup.reports.next(timeout=0.1)
        with requester_scp(setup):
            event_type, report, came_on = setup.reports.next()
        assert (event_type, came_on) == (1, "acceptor")
        assert uids(report.ReferencedSOPSequence) == {uid for _, uid in references}
    finally:
        server.stop()


def test_a_report_pending_at_shutdown_is_delivered_after_a_restart(
    setup: Setup, tmp_path: Path
) -> None:
    first = setup.server(report_on_same_association=False, retry_initial=60, retry_max=60)
    first.start()
    try:
        references = stored(first, tmp_path / "ct", 2)
        with modality(first, setup) as assoc:
            assert request(assoc, action(references)) == 0x0000
        first.wait_for("commitment report not delivered; will retry")
    finally:
        assert first.stop() == 0
    with requester_scp(setup):
        second = setup.server(report_on_same_association=False).start()
        try:
            event_type, report, _ = setup.reports.next()
        finally:
            second.stop()
    assert event_type == 1
    assert uids(report.ReferencedSOPSequence) == {uid for _, uid in references}


def test_refusals(server: PacsdProcess, setup: Setup) -> None:
    with modality(server, setup) as assoc:
        assert request(assoc, action([missing_uid()]), action_type=2) == 0x0123
        no_transaction = action([missing_uid()])
        del no_transaction.TransactionUID
        assert request(assoc, no_transaction) == 0x0120
        info = action([missing_uid()])
        assert request(assoc, info) == 0x0000
        assert request(assoc, info) == 0x0110  # the same Transaction UID again
    with modality(server, setup, calling="NOCOMMIT") as assoc:
        assert request(assoc, action([missing_uid()])) == 0x0124


def audit_events(setup: Setup) -> list[dict[str, Any]]:
    """The audit trail's messages so far."""
    path = setup.root / "audit.jsonl"
    return audit_records(path)


def not_sent(setup: Setup) -> list[str]:
    """The descriptions of the audited commitment reports that will not be sent."""
    return [
        str(event["EventIdentification"].get("EventOutcomeDescription", ""))
        for event in audit_events(setup)
        if event["EventIdentification"]["EventID"]["csd-code"] == "110104"
        and "storage commitment report"
        in event["EventIdentification"].get("EventOutcomeDescription", "")
    ]


def test_a_report_to_a_requester_missing_from_peers_is_given_up(
    setup: Setup, tmp_path: Path
) -> None:
    """A requester pacsd cannot reach (not in `peers`) is retried max_attempts times, then the
    report is given up: logged, audited, listed as given up, no longer retried."""
    config = setup.config(report_on_same_association=False, max_attempts=2)
    config["peers"] = []
    server = PacsdProcess.from_config(setup.root, config).start()
    try:
        references = stored(server, tmp_path / "ct", 2)
        info = action(references)
        with modality(server, setup) as assoc:
            assert request(assoc, info) == 0x0000
        [given_up] = server.wait_for("commitment report given up")
        assert given_up["transaction_uid"] == info.TransactionUID
        assert given_up["attempts"] == 2
        assert "MODALITY is not in the AE table (peers)" in given_up["reason"]
        assert len(server.events("commitment report not delivered; will retry")) == 1
        listed = pacsd_command("commitment", "list", "--config", str(server.config_path))
        assert listed.returncode == 0, listed.stderr
        assert info.TransactionUID not in listed.stdout  # nothing waits any more
        everything = pacsd_command(
            "commitment", "list", "--all", "--json", "--config", str(server.config_path)
        )
        [row] = json.loads(everything.stdout)
        assert (row["transaction_uid"], row["state"], row["instances"]) == (
            info.TransactionUID,
            "given-up",
            2,
        )
    finally:
        server.stop()
    [audited] = not_sent(setup)
    assert audited.startswith("storage commitment report to MODALITY not sent: given up: 2")


def test_a_report_older_than_its_lifetime_is_given_up(setup: Setup, tmp_path: Path) -> None:
    """commitment.report_lifetime ends the retries of a report to a requester never reachable."""
    server = setup.server(report_on_same_association=False, report_lifetime=1).start()
    try:
        references = stored(server, tmp_path / "ct", 1)
        with modality(server, setup) as assoc:
            assert request(assoc, action(references)) == 0x0000
        [given_up] = server.wait_for("commitment report given up")
        assert given_up["reason"] == "undelivered after 1 s"
    finally:
        server.stop()
    [audited] = not_sent(setup)
    assert "given up: undelivered after 1 s" in audited


def test_commitment_list_and_cancel_while_the_server_runs(setup: Setup, tmp_path: Path) -> None:
    """`pacsd commitment list` shows the waiting reports; `cancel ID` drops one (audited), an
    ID that waits for nothing exits 1, and `cancel --all` empties the queue."""
    server = setup.server(report_on_same_association=False, retry_initial=60, retry_max=60)
    server.start()
    config = ("--config", str(server.config_path))
    try:
        references = stored(server, tmp_path / "ct", 1)
        transactions = [action(references), action(references)]
        with modality(server, setup) as assoc:
            for info in transactions:
                assert request(assoc, info) == 0x0000
        server.wait_for("commitment report not delivered; will retry", count=2)
        listed = pacsd_command("commitment", "list", "--json", *config)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [row["transaction_uid"] for row in rows] == [t.TransactionUID for t in transactions]
        assert all(row["state"] == "pending" and row["attempts"] == 1 for row in rows)
        table = pacsd_command("commitment", "list", *config)
        assert "MODALITY" in table.stdout

        first = str(rows[0]["id"])
        cancelled = pacsd_command("commitment", "cancel", first, "999", *config)
        assert cancelled.returncode == 1
        assert f"cancelled {first}: {transactions[0].TransactionUID} to MODALITY" in (
            cancelled.stdout
        )
        assert "no waiting report 999" in cancelled.stdout
        rest = pacsd_command("commitment", "cancel", "--all", *config)
        assert rest.returncode == 0, rest.stderr
        assert transactions[1].TransactionUID in rest.stdout
        left = json.loads(pacsd_command("commitment", "list", "--json", *config).stdout)
        assert left == []
        assert pacsd_command("commitment", "cancel", *config).returncode == 2  # IDs or --all
    finally:
        server.stop()
    audited = not_sent(setup)
    assert len(audited) == 2
    assert all(text.endswith("not sent: cancelled") for text in audited)
